"""The learning curves: the one place that names them. The trainer writes them through dvclive, the figures read
them back, and the `plots` of `dvc.yaml` draw them (a test checks that dvc.yaml names only these).

A curve is a dvclive metric with a plot: `<live dir>/plots/metrics/<name>.tsv`, columns `step` and the name's last
part, one row per optimiser step at which the Trainer logged it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from forgetting.layout import LANGUAGES

TRAIN_LOSS = "train/loss"  # CTC + the regularisers, as the optimiser sees it
TRAIN_CTC_LOSS = "train/ctc_loss"
TRAIN_PENALTY = "train/penalty"  # (λ/2)·Σ Ω·(θ−θ*)²: ewc, mas, l2
TRAIN_KD_LOSS = "train/kd_loss"  # the weighted distillation term: lwf
DEV_RATES = ("loss", "wer", "cer")
DEV_AVERAGE_WER = "eval/average_wer"  # the mean dev WER over the languages a stage evaluates


def dev_curve(lang: str, rate: str) -> str:
    """The dev curve of `rate` (loss, wer, cer) on `lang`'s dev split: `eval/nl_wer`. Adapt evaluates the source
    language's dev split too: `eval/nl_wer` there is the forgetting curve."""
    return f"eval/{lang}_{rate}"


CURVES = (TRAIN_LOSS, TRAIN_CTC_LOSS, TRAIN_PENALTY, TRAIN_KD_LOSS, DEV_AVERAGE_WER,
          *(dev_curve(lang, rate) for lang in LANGUAGES for rate in DEV_RATES))


def curve_file(live_dir: Path, curve: str) -> Path:
    """Where dvclive writes `curve` in the live folder `live_dir` (a stage's reports folder)."""
    return Path(live_dir) / "plots" / "metrics" / f"{curve}.tsv"


def read_curve(live_dir: Path, curve: str) -> tuple[list[int], list[float]]:
    """A curve as (steps, values); empty when it was never written (no penalty without a regulariser)."""
    path = curve_file(live_dir, curve)
    if not path.is_file():
        return [], []
    column = curve.rsplit("/", 1)[-1]
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [int(r["step"]) for r in rows], [float(r[column]) for r in rows]
