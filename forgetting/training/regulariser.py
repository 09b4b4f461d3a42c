"""The training core's one hook for a continual-learning method: a `Regulariser` adds to the CTC objective.

A method adds either a term to every micro-batch's loss (`loss`: distillation, which needs the batch), or a gradient
once per optimiser step (`add_gradient`: the EWC, MAS and L2 penalties, whose gradient λ·Ω·(θ − θ*) does not depend on
the batch). The core (`forgetting.training.ctc_trainer`) calls both at the right moment and logs each regulariser's value as
its curve (`forgetting.curves`); it knows nothing else about the methods.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


class Regulariser:
    """Base class: no loss term, no gradient, nothing to log. Subclasses override what they add."""

    curve = "train/regulariser"  # its logged value's curve (forgetting.curves names them: train/penalty, train/kd_loss)

    def loss(self, model: nn.Module, inputs: Mapping[str, Tensor], logits: Tensor) -> Tensor | None:
        """A term added to a training micro-batch's CTC loss and differentiated with it (so DistributedDataParallel
        reduces its gradient like the CTC one). `inputs` is the collated batch (`input_values` (batch, samples),
        `attention_mask` (batch, samples), `labels`); `logits` are the model's (batch, frames, vocab). The core weighs
        it like the CTC loss (a piece of a micro-batch by its share). None: no loss term."""
        return None

    def add_gradient(self, model: nn.Module, scale: float) -> None:
        """Add this regulariser's gradient into the parameters' `.grad`, once per optimiser step: after the backward
        passes of all its micro-batches and the reduction across processes, before clipping. `scale` is the loss scale
        the gradients carry (fp16), else 1."""

    def value(self, model: nn.Module) -> Tensor | None:
        """The value to log at the model's current weights (computed only on logging steps), or None when the `loss`
        terms are logged instead."""
        return None
