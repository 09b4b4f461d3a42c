"""The learning curves: the one place that names them. The trainer writes them through dvclive, the figures read
them back, and the `plots` of `dvc.yaml` draw them (a test checks that dvc.yaml names only these).

A curve is a dvclive metric with a plot: `<live dir>/plots/metrics/<name>.tsv`, columns `step` and the name's last
part, one row per optimiser step at which the Trainer logged it.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dvclive.utils import standardize_metric_name
from transformers.integrations import DVCLiveCallback

from forgetting.io import atomic_write_text

TRAIN_LOSS = "train/loss"  # CTC + penalty, as the optimiser sees it
TRAIN_CTC_LOSS = "train/ctc_loss"
TRAIN_PENALTY = "train/penalty"  # (λ/2)·Σ F·(θ−θ*)², adapt only
DEV_LOSS = "eval/loss"
DEV_WER = "eval/wer"
DEV_CER = "eval/cer"
CURVES = (TRAIN_LOSS, TRAIN_CTC_LOSS, TRAIN_PENALTY, DEV_LOSS, DEV_WER, DEV_CER)


def log_key(curve: str) -> str:
    """The Trainer log key that becomes `curve`: `ctc_loss` for `train/ctc_loss` (as the Trainer logs `loss`),
    `eval_wer` for `eval/wer`."""
    split, name = curve.split("/", 1)
    return name if split == "train" else f"{split}_{name}"


def live_metric(key: str) -> tuple[str, bool]:
    """The dvclive name of a Trainer log key (`train/...`, `eval/...`) and whether it gets a curve: timings,
    totals and the epoch go to metrics.json only, not to plots of one point or of no interest."""
    if key == "train_loss":  # the end-of-run mean, not the curve of `loss`
        key = "train_mean_loss"
    elif not key.startswith(("train_", "eval_")) and key not in ("epoch", "total_flos"):
        key = f"train_{key}"  # loss, grad_norm, learning_rate
    plot = not any(word in key for word in ("runtime", "per_second", "flos", "epoch", "mean_loss"))
    return standardize_metric_name(key, "dvclive.huggingface"), plot


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


def truncate_curves(live_dir: Path, last_step: int) -> int:
    """Drop every curve point after `last_step` (a run resumed from that checkpoint logs those steps again), each file
    rewritten atomically; returns the number of points dropped."""
    dropped = 0
    for path in sorted((Path(live_dir) / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = path.read_text(encoding="utf-8").splitlines()
        step = header.split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[step]) <= last_step]
        if len(kept) < len(rows):
            dropped += len(rows) - len(kept)
            atomic_write_text(path, "\n".join([header, *kept]) + "\n")
    return dropped


class DVCLiveCurves(DVCLiveCallback):
    """dvclive points at the optimiser step (the stock callback counts log calls, which evaluations add to),
    with the names and plots of `live_metric`."""

    def setup(self, args, state, model):
        # no Live.log_params: the run's params are params.yaml's, tracked by DVC; a dump of TrainingArguments
        # would be a stray, undeclared file holding the checkpoint path
        self._initialized = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            name, plot = live_metric(key)
            self.live.log_metric(name, value, plot=plot)
        self.live.next_step()
