"""Stage `sample@<lang>`: metadata filters, a seeded sample, and speaker-disjoint train/dev/test splits.

Reads only `<corpus>/<lang>/validated.tsv`, never the clips (validate opens those).
"""

from pathlib import Path

from forgetting.corpus import filter_and_sample, read_corpus_tsv, split_by_speaker, write_split_tsv
from forgetting.io import write_json
from forgetting.layout import SPLITS, corpus_metadata, split_file
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="counts JSON")
    args, params = cli.start(parser)
    lang = params.sample.language(args.lang)

    source = corpus_metadata(params.data.corpus, args.lang)
    rows = read_corpus_tsv(source)
    sample = filter_and_sample(rows, lang.alphabet, params.sample.min_up_votes, lang.n, seed=f"{params.seed}-{args.lang}")
    if len(sample.passed) <= lang.n:
        print(f"sample {args.lang}: only {len(sample.passed)} rows pass the filters "
              f"(sample.{args.lang}.n = {lang.n}); taking all")
    splits = split_by_speaker(sample.sampled, vars(params.sample.split), seed=params.seed)

    for name in SPLITS:
        write_split_tsv(split_file(args.out, name), splits[name])
    write_json(args.metrics, {
        "rows_read": len(rows),
        "dropped": dict(sorted(sample.dropped.items())),
        "passed_filters": len(sample.passed),
        "sampled": len(sample.sampled),
        "seed": params.seed,
        "splits": {name: {"utterances": len(splits[name]), "speakers": len({u.client_id for u in splits[name]})}
                   for name in SPLITS},
    })
    counts = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
    print(f"sample {args.lang}: read {len(rows)} rows from {source}, dropped {sum(sample.dropped.values())}, "
          f"sampled {len(sample.sampled)} ({counts}) -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
