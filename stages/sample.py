"""Stages `sample@<lang>` and `sample_official@<lang>` for a language read from a Common Voice-layout folder: the
metadata filters, a seeded sample, and train/dev/test splits, either grouped (no speaker and no sentence in two splits;
the language is in `data.common_voice`) or the release's official ones (in `data.common_voice_official`).

Reads only the metadata files (`validated.tsv`, or `train.tsv`/`dev.tsv`/`test.tsv`), never the clips (validate
opens those). The counts JSON is written even when the stage then fails (no row passes the filters, no split fits).
"""

import gc
from pathlib import Path

from forgetting.data.corpus import read_corpus_tsv, write_split_tsv
from forgetting.data.sampling import sample_grouped, sample_official
from forgetting.io import write_json
from forgetting.layout import SPLITS, corpus_metadata, split_file
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="counts JSON")
    args, params = cli.start(parser)
    if args.lang not in {**params.data.common_voice, **params.data.common_voice_official}:
        raise SystemExit(f"sample {args.lang}: not in data.common_voice nor data.common_voice_official")
    folder, lang, splits = params.data.source(args.lang).path, params.sample.language(args.lang), params.data.splits(args.lang)

    if splits == "official":
        sources = {name: corpus_metadata(folder, name) for name in SPLITS}
        rows = {name: read_corpus_tsv(path) for name, path in sources.items()}
        gc.freeze()  # the rows live to the end: the cyclic collector need not walk them again (a tenth of the stage)
        drawn, error = sample_official(rows, {name: str(path) for name, path in sources.items()}, lang, params.sample,
                                       params.seed, args.lang)
    else:
        source = corpus_metadata(folder)
        rows = read_corpus_tsv(source)
        gc.freeze()
        drawn, error = sample_grouped(rows, str(source), lang, params.sample, params.seed, args.lang)
    write_json(args.metrics, {"lang": args.lang, **drawn.counts})
    if error is not None:
        raise error
    for name in SPLITS:
        write_split_tsv(split_file(args.out, name), drawn.splits[name])
    counts = ", ".join(f"{name} {len(drawn.splits[name])}" for name in SPLITS)
    print(f"sample {args.lang}: {splits} splits from {folder}: kept {drawn.counts['kept']} ({counts}) -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
