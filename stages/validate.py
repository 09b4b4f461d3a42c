"""Stage `validate@<lang>`: open every sampled clip, keep the readable ones within the duration and loudness
bounds (with a `duration_s` column), and record every reject with its reason.

Clips are read from the language's clips folder (`forgetting.layout.clips_dir`: `<path>/clips` of a Common Voice-layout
source, the sampled clips of a dataset source; a relative path is relative to the repository root, the working
directory of `dvc repro`). Outputs are written into `<out>.tmp` and renamed to `<out>` only when
the reject fraction is within `validate.max_reject_fraction`, so a failed or interrupted run leaves nothing
that looks complete; on failure `<out>.tmp/rejects.tsv` is kept for inspection.
"""

import shutil
from collections import Counter
from pathlib import Path

from forgetting.data.corpus import read_split_tsv, write_split_tsv
from forgetting.data.validation import (
    ValidationError,
    check_reject_fraction,
    validate_splits,
    validation_metrics,
    write_rejects_tsv,
)
from forgetting.io import replace_dir, temp_dir, write_json
from forgetting.layout import SPLITS, clips_dir, split_file
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--lang", required=True)
    parser.add_argument("--sampled", type=Path, required=True, help="folder with the sampled train/dev/test.tsv")
    parser.add_argument("--out", type=Path, required=True, help="folder for the validated TSVs and rejects.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="counts JSON")
    args, params = cli.start(parser)
    bounds = params.validate

    clips = clips_dir(params.data.source(args.lang))
    if not clips.is_dir():
        raise SystemExit(f"validate {args.lang}: no clips folder {clips} (see params.yaml data.{params.data.group(args.lang)})")
    splits = {name: read_split_tsv(split_file(args.sampled, name)) for name in SPLITS}
    validation = validate_splits(splits, clips, bounds.min_seconds, bounds.max_seconds, bounds.min_rms, bounds.workers)

    shutil.rmtree(args.out, ignore_errors=True)  # a failed run must not leave the previous run's output looking current
    tmp = temp_dir(args.out)
    for name in SPLITS:
        write_split_tsv(split_file(tmp, name), validation.kept[name], extra=("duration_s",))
    write_rejects_tsv(tmp / "rejects.tsv", validation.rejects)
    try:
        metrics = validation_metrics(splits, validation)
        check_reject_fraction(args.lang, validation, metrics, bounds.max_reject_fraction)
    except ValidationError as err:
        raise SystemExit(f"{err}\nclips folder: {clips}; every reject: {tmp / 'rejects.tsv'}") from err
    replace_dir(tmp, args.out)
    write_json(args.metrics, {"lang": args.lang, **metrics})

    reasons = Counter(r.reason for r in validation.rejects)
    rejected = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    print(f"validate {args.lang}: kept {metrics['kept']}/{metrics['sampled']} clips "
          f"({metrics['rejected']} rejected{': ' + rejected if rejected else ''}) "
          f"{metrics['hours_kept']:.2f} h, wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
