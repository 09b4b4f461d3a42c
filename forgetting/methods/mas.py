"""Memory Aware Synapses (Aljundi et al. 2018): an importance per parameter from how much the model's output on
source utterances moves with it, with no labels. The penalty that uses it is EWC's (λ/2)·Σ Ω·(θ − θ*)²
(`forgetting.methods.penalty`), the importance in place of the Fisher.

Output: gₙ = (1/Tₙ)·Σₜ ‖softmax(zₙₜ)‖²₂, the squared L2 norm of the frame posteriors, averaged over utterance n's Tₙ
valid frames (so a long utterance does not weigh more than a short one). Importance: Ωᵢ = (1/N)·Σₙ |∂gₙ/∂θᵢ|, one
gradient per utterance (never of a mini-batch), at the pretrained weights, model in eval mode.

Why posteriors and not the logits z that Aljundi et al.'s code differentiates: CTC trains z only through
log_softmax, so z is defined up to a constant per frame, and ‖z‖² would weigh a direction the model's function does
not have. ‖p‖² lies in [1/vocab, 1] and sees only what the model predicts. Log-probabilities are shift-free too, but
‖log p‖² is unbounded and ruled by the least likely tokens. The cost of posteriors: ∂‖p‖²/∂z = 2·p ⊙ (p − ‖p‖²)
vanishes on confident frames (p one-hot), so the importance comes from the frames where the model hesitates.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from forgetting.methods.fisher import EncodedUtterance, encoded_utterances
from forgetting.methods.grad_sample import SquaredGradSampler, accumulate_batched, accumulate_looped, padding_is_safe


def posterior_square_norms(model: nn.Module, logits: Tensor, attention_mask: Tensor) -> Tensor:
    """gₙ (batch,) float64: the mean over each utterance's valid frames of ‖softmax(logits)‖²₂, from `logits`
    (batch, frames, vocab) and the audio `attention_mask` (batch, samples); frames past an utterance's end are left
    out."""
    frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
    valid = torch.arange(logits.shape[1], device=logits.device) < frames[:, None]
    # float64, as the Fisher's CTC loss: float32 rounding would swamp the agreement of the looped and batched paths
    square_norms = torch.softmax(logits, dim=-1, dtype=torch.float64).square().sum(-1)
    return (square_norms * valid).sum(-1) / frames


def estimate_mas(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, batch_size: int = 1,
                 samples: int | None = None, progress: bool = False) -> tuple[dict[str, Tensor], int]:
    """Σₙ |∂gₙ/∂θ| over the utterances (see module docstring), and their count N: the importance is the sum / N.

    Per parameter with `requires_grad=True`, a float32 tensor of its shape on the model's device. `batches` as
    `forgetting.methods.fisher.estimate_fisher` takes them: dicts with `input_values` (batch, samples) float32 and optional
    right-padded `attention_mask` (batch, samples); labels are not needed. They are regrouped into `batch_size`
    utterances: 1 runs the one-at-a-time loop, more the batched per-utterance-gradient path (same sums; used only
    where `padding_is_safe`). The first `samples` utterances are used (all when None; fewer raise). The model is in
    eval mode during estimation, restored after.
    """
    for arg, value in (("batch_size", batch_size), ("samples", 1 if samples is None else samples)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no parameter with requires_grad=True: nothing to estimate")
    sampler = SquaredGradSampler(model, {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}, power=1)
    was_training, count = model.training, 0
    model.eval()
    try:
        utterances = itertools.islice(encoded_utterances(batches, need_labels=False), samples)
        with tqdm(total=samples, desc="importance (mas)", unit="utt", disable=not progress) as bar:
            for group in iter(lambda: list(itertools.islice(utterances, batch_size)), []):
                _accumulate(sampler, group, params)
                count += len(group)
                bar.update(len(group))
    finally:
        model.train(was_training)
    if count == 0 or (samples is not None and count < samples):
        raise ValueError(f"MAS needs {samples or 'at least 1'} utterances, the batches held {count}")
    return dict(sampler.sums), count  # their finiteness is checked once summed (forgetting.methods.importance.normalised)


def _accumulate(sampler: SquaredGradSampler, group: list[EncodedUtterance], params: Mapping[str, nn.Parameter]) -> None:
    """Add one group of utterances' |∂gₙ/∂θ| into `sampler.sums`."""
    model = sampler.model
    no_target = [torch.empty(0)]  # gₙ needs no labels: one placeholder target per utterance

    def outputs(logits: Tensor, mask: Tensor, targets: list[Tensor]) -> Tensor:
        return posterior_square_norms(model, logits, mask)

    audio = [u.input_values for u in group]
    if len(group) > 1 and padding_is_safe(model, audio):
        accumulate_batched(sampler, audio, lambda b, logits: no_target, outputs, params)
    else:
        accumulate_looped(model, audio, lambda b, logits: no_target, outputs, params, sampler.sums, power=1)
