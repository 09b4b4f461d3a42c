"""The learning curves: the one place that names them. The trainer writes them through dvclive, the figures read
them back, and the `plots` of `dvc.yaml` draw them (a test checks that dvc.yaml names only these).

A curve is a dvclive metric with a plot: `<live dir>/plots/metrics/<name>.tsv`, columns `step` and the name's last
part, one row per optimiser step at which the Trainer logged it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from dvclive.utils import standardize_metric_name
from transformers.integrations import DVCLiveCallback

from forgetting.io import replace_dir, temp_dir

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


# The Trainer's end-of-run mean training loss averages only the steps since a resume: not logged (the curve is).
UNLOGGED = ("train_loss",)


def live_metric(key: str) -> tuple[str, bool]:
    """The dvclive name of a Trainer log key (`train/...`, `eval/...`) and whether it gets a curve: timings,
    totals and the epoch go to metrics.json only, not to plots of one point or of no interest."""
    if not key.startswith(("train_", "eval_")) and key not in ("epoch", "total_flos"):
        key = f"train_{key}"  # loss, grad_norm, learning_rate
    plot = not any(word in key for word in ("runtime", "per_second", "flos", "epoch"))
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


CHECKPOINT_CURVES = "curves"  # the copy of the curves inside each Trainer checkpoint folder


def save_curves(live_dir: Path, checkpoint: Path) -> None:
    """Copy the curves as they are at a checkpoint into it (`<checkpoint>/curves`, renamed into place when whole):
    a resumed run starts from this copy, whatever happened to the live folder since (DVC removes a stage's outputs
    before it runs the stage again)."""
    source = Path(live_dir) / "plots" / "metrics"
    tmp = temp_dir(Path(checkpoint) / CHECKPOINT_CURVES)
    if source.is_dir():
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    replace_dir(tmp, Path(checkpoint) / CHECKPOINT_CURVES)


def restore_curves(checkpoint: Path, live_dir: Path) -> None:
    """Put the curves saved in `checkpoint` back into the live folder, replacing what is there: points logged after
    the checkpoint are logged again by the resumed run, so no curve holds a step twice, and none loses one."""
    tmp = temp_dir(Path(live_dir) / "plots" / "metrics")
    shutil.copytree(Path(checkpoint) / CHECKPOINT_CURVES, tmp, dirs_exist_ok=True)
    replace_dir(tmp, Path(live_dir) / "plots" / "metrics")


class DVCLiveCurves(DVCLiveCallback):
    """dvclive points at the optimiser step (the stock callback counts log calls, which evaluations add to),
    with the names and plots of `live_metric`."""

    def setup(self, args, state, model):
        # no Live.log_params: the run's params are params.yaml's, tracked by DVC; a dump of TrainingArguments
        # would be a stray, undeclared file holding the checkpoint path
        self._initialized = True

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_curves(self.live.dir, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            if key in UNLOGGED:
                continue
            name, plot = live_metric(key)
            self.live.log_metric(name, value, plot=plot)
        self.live.next_step()
