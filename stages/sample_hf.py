"""Stage `sample_hf@<lang>` for a language read from a Hugging Face audio dataset on disk (`data.datasets.<lang>`):
the same filters, sample and splits as `sample@<lang>` (grouped, or the dataset's own splits named in
`data.datasets.<lang>.split_names` with `data.datasets.<lang>.splits: official`), then the chosen rows' audio, as stored, written
to the language's clips folder (`data.datasets.<lang>.clips`), from where validate, training and eval read it.

Reads the dataset with `datasets` (`forgetting.data.hf_dataset`), never decoding audio with it. The counts JSON is written
even when the stage then fails.
"""

from pathlib import Path

from forgetting.data.corpus import write_split_tsv
from forgetting.data.hf_dataset import read_rows, write_clips
from forgetting.data.sampling import sample_grouped, sample_official
from forgetting.io import write_json
from forgetting.layout import SPLITS, clips_dir, split_file
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for train/dev/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="counts JSON")
    args, params = cli.start(parser)
    if args.lang not in params.data.datasets:
        raise SystemExit(f"sample_hf {args.lang}: not in data.datasets (have {', '.join(params.data.datasets) or 'none'})")
    source, lang = params.data.datasets[args.lang], params.sample.language(args.lang)

    rows = read_rows(source)  # by the dataset's split names
    if source.splits == "official":
        drawn, error = sample_official({ours: rows[theirs] for ours, theirs in source.split_names.items()},
                                       {ours: f"{source.path} split {theirs}" for ours, theirs in source.split_names.items()},
                                       lang, params.sample, params.seed, args.lang)
    else:
        pooled = [u for theirs in source.split_names.values() for u in rows[theirs]]
        drawn, error = sample_grouped(pooled, f"{source.path} splits {', '.join(source.split_names.values())}", lang,
                                      params.sample, params.seed, args.lang)
    write_json(args.metrics, {"lang": args.lang, "speakers_from": source.client_id or "none: each row its own speaker",
                              **drawn.counts})
    if error is not None:
        raise error
    for name in SPLITS:
        write_split_tsv(split_file(args.out, name), drawn.splits[name])
    written = write_clips(source, [u for name in SPLITS for u in drawn.splits[name]], clips_dir(source))
    counts = ", ".join(f"{name} {len(drawn.splits[name])}" for name in SPLITS)
    print(f"sample_hf {args.lang}: {source.splits} splits from {source.path}: kept {drawn.counts['kept']} ({counts}), "
          f"{written / 1e6:.1f} MB of clips -> {args.out}, {clips_dir(source)}")


if __name__ == "__main__":
    cli.run(main)
