"""The guards of an optimiser step: a step with a non-finite loss or gradient is skipped and counted, an fp16 run whose
loss scale collapses is stopped, and a clip too long for memory even alone is named. `forgetting.training.trainer`
applies them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from forgetting.errors import InputError

log = logging.getLogger("forgetting.training.trainer")  # the trainer's log: these are its messages


class NonFiniteStepsError(InputError):
    """Too many optimiser steps with a non-finite loss or gradient: the run diverged or its data is broken."""


class SkippedSteps(TrainerCallback, ExportableState):
    """The optimiser steps skipped for a non-finite loss or gradient. Saved in every checkpoint, so a resumed run
    keeps counting where the killed one stopped."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def state(self) -> dict:
        return {"args": {}, "attributes": {"steps": self.steps}}

    def record(self, step: int, paths: Sequence[str], max_fraction: float, max_steps: int) -> None:
        """Count `step`, log its clips, and stop the run when more than `max_fraction` of `max_steps` were skipped."""
        self.steps.append(step)
        log.warning("step %d skipped: its loss or gradient is not finite; its clips: %s", step, ", ".join(paths) or "?")
        if len(self.steps) > max_fraction * max_steps:
            raise NonFiniteStepsError(
                f"{len(self.steps)} of {max_steps} optimiser steps skipped for a non-finite loss or gradient (steps "
                f"{self.steps[:10]}), more than max_skipped_fraction = {max_fraction}; the last one's clips: "
                f"{', '.join(paths) or '?'}")


MIN_LOSS_SCALE = 1.0  # an fp16 loss scale backed off below this: the gradient overflows at any scale


def check_loss_scale(scale: float, step: int, paths: Sequence[str]) -> None:
    """Stop an fp16 run whose loss scaler has backed off below MIN_LOSS_SCALE. Its overflows are the scaler's to skip
    and are not counted against max_skipped_fraction, but from 65536 it takes 17 overflows in a row to get there: the
    gradient is then not finite at any scale, and the run skips every step without training."""
    if scale < MIN_LOSS_SCALE:
        raise NonFiniteStepsError(
            f"step {step}: the fp16 loss scale has fallen to {scale:g}: the gradient overflows at any scale, so no step "
            f"trains (the run diverged or its data is broken; lower the lr, or train in bf16 or fp32); this step's "
            f"clips: {', '.join(paths) or '?'}")


class OutOfMemoryError(InputError):
    """A single clip that does not fit in memory even alone; the message names it."""
