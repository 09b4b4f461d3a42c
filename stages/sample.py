"""Stage `sample@<lang>`: metadata filters, a seeded sample, and speaker-disjoint train/dev/test splits.

Reads only `<corpus>/<lang>/validated.tsv`, never the clips (validate opens those).
"""

import argparse
import random
from collections import Counter
from pathlib import Path

from stages.corpus import SPLITS, metadata_reject_reason, read_corpus_tsv, split_by_speaker, write_json, write_split_tsv
from stages.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="counts JSON")
    args = parser.parse_args()
    params = load_params()
    lang = params.sample.language(args.lang)

    source = Path(params.data.corpus) / args.lang / "validated.tsv"
    rows = read_corpus_tsv(source)
    dropped: Counter[str] = Counter()
    passed = []
    for row in rows:
        reason = metadata_reject_reason(row, lang.alphabet, params.sample.min_up_votes)
        if reason:
            dropped[reason] += 1
        else:
            passed.append(row)
    if len(passed) <= lang.n:
        print(f"sample {args.lang}: only {len(passed)} rows pass the filters (sample.{args.lang}.n = {lang.n}); taking all")
        sampled = passed
    else:
        sampled = random.Random(f"{params.seed}-{args.lang}").sample(passed, lang.n)
    splits = split_by_speaker(sampled, vars(params.sample.split), seed=params.seed)

    for name in SPLITS:
        write_split_tsv(args.out / f"{name}.tsv", splits[name])
    write_json(args.metrics, {
        "rows_read": len(rows),
        "dropped": {reason: dropped.get(reason, 0) for reason in sorted(dropped)},
        "passed_filters": len(passed),
        "sampled": len(sampled),
        "seed": params.seed,
        "splits": {name: {"utterances": len(splits[name]), "speakers": len({u.client_id for u in splits[name]})}
                   for name in SPLITS},
    })
    counts = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
    print(f"sample {args.lang}: read {len(rows)} rows from {source}, dropped {sum(dropped.values())}, "
          f"sampled {len(sampled)} ({counts}) -> {args.out}")


if __name__ == "__main__":
    main()
