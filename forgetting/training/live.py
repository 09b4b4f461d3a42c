"""The learning curves as training writes them: the Trainer's log keys of each curve, the dvclive callback that logs
them at the optimiser step, and the copy of the curves each checkpoint holds for a resumed run. The names and the file
format are `forgetting.curves`'s.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dvclive.utils import standardize_metric_name
from transformers.integrations import DVCLiveCallback

from forgetting.io import replace_dir, temp_dir


def log_key(curve: str) -> str:
    """The Trainer log key that becomes `curve`: `ctc_loss` for `train/ctc_loss` (as the Trainer logs `loss`),
    `eval_nl_wer` for `eval/nl_wer` (the Trainer's name for `wer` on its dev set `nl`)."""
    split, name = curve.split("/", 1)
    return name if split == "train" else f"{split}_{name}"


def live_metric(key: str) -> tuple[str, bool]:
    """The dvclive name of a Trainer log key (`train/...`, `eval/...`) and whether it is a result to log: timings,
    totals, the epoch and the Trainer's end-of-run mean loss (which averages only the steps since a resume) are not
    (the stage writes its timings to a file of their own, not to its metrics)."""
    result = key != "train_loss" and not any(word in key for word in ("runtime", "per_second", "flos", "epoch"))
    if not key.startswith(("train_", "eval_")) and key not in ("epoch", "total_flos"):
        key = f"train_{key}"  # loss, grad_norm, learning_rate: the per-step training log
    return standardize_metric_name(key, "dvclive.huggingface"), result


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
            name, result = live_metric(key)
            if result:
                self.live.log_metric(name, value)
        self.live.next_step()
