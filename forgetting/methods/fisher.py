"""The diagonal Fisher of the source task, from per-utterance gradients. Its file, normalisation and statistics are in
`forgetting.methods.importance`; the penalty that uses it is in `forgetting.methods.penalty`.

Fisher: Fᵢ = (1/N)·Σₙ (∂ℓₙ/∂θᵢ)², per utterance n (never the square of a mini-batch gradient), at the pretrained
weights, model in eval mode. ℓₙ, per utterance, is one of:
- `loss="log_likelihood"`: −log p(y|x), the utterance's CTC negative log-likelihood, not divided by anything. With
  labels y drawn from the model (`kind="sampled"`) this is the Monte-Carlo estimate of the model's Fisher
  E_x E_{y~p(y|x)}[(∇ log p(y|x))²]; with the reference transcripts (`kind="empirical"`), the empirical Fisher.
- `loss="training_loss"`: the CTC loss as training computes it per utterance: −log p(y|x) divided by the target
  length |y| when `config.ctc_loss_reduction == "mean"` (clamped to ≥ 1, as `torch.nn.functional.ctc_loss` does),
  not divided when "sum". Under "mean" its squared gradient is |y|⁻²·(∇ log p(y|x))²: each utterance reweighted by
  the inverse square of its label length (and each sampled draw by its own), which is not the model's Fisher.
`kind="sampled"` averages the squared gradient over `draws` label sequences per utterance, drawn from the model's own
frame posteriors with a generator seeded by (seed, the utterance's position in the chosen list), so the draws do not
depend on how the utterances are split into batches or over processes.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from forgetting.data.corpus import Utterance
from forgetting.methods.grad_sample import SquaredGradSampler, accumulate_batched, accumulate_looped, padding_is_safe
from forgetting.methods.importance import Importance, normalised
from forgetting.training.batching import LABEL_PAD as IGNORE_INDEX

FisherLoss = Literal["log_likelihood", "training_loss"]


@dataclass(frozen=True)
class EncodedUtterance:
    """One source-language utterance as the model reads it: `input_values` (samples,) float32 16 kHz audio
    normalised to zero mean and unit variance, unpadded; `labels` (label_len,) int64 vocabulary ids, unpadded."""

    input_values: Tensor
    labels: Tensor


def choose_utterances(utterances: Sequence[Utterance], samples: int, seed: int) -> list[Utterance]:
    """`samples` utterances drawn with `random.Random(seed)`, longest first (so batches hold little padding)."""
    if len(utterances) < samples:
        raise ValueError(f"importance.samples = {samples}, but the split holds only {len(utterances)} utterances")
    return sorted(random.Random(seed).sample(list(utterances), samples), key=lambda u: -(u.duration_s or 0))


def utterance_ctc_losses(model: nn.Module, logits: Tensor, attention_mask: Tensor, labels: Tensor,
                         loss: FisherLoss) -> Tensor:
    """Per-utterance CTC losses (batch,) from `logits` (batch, frames, vocab), the audio `attention_mask` (batch,
    samples) and `labels` (batch, label_len) padded with -100 (blank ids are ignored too, as transformers does):
    −log p(y|x) for "log_likelihood", or as training defines it for "training_loss" (divided by the target length,
    ≥ 1, when the model's reduction is "mean"). Computed in float64: the same loss as training's float32 one, but
    float32 CTC gradients carry ~1e-5 relative rounding, which would swamp the agreement of the looped and batched
    paths (~1e-7 in float64)."""
    if loss not in ("log_likelihood", "training_loss"):
        raise ValueError(f"loss must be 'log_likelihood' or 'training_loss', got {loss!r}")
    config = model.config
    frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
    keep = (labels != IGNORE_INDEX) & (labels != config.pad_token_id)
    target_lengths = keep.sum(-1)
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float64).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):
        losses = F.ctc_loss(log_probs, labels.masked_select(keep), frames, target_lengths, blank=config.pad_token_id,
                            reduction="none", zero_infinity=config.ctc_zero_infinity)
    if loss == "log_likelihood" or config.ctc_loss_reduction == "sum":
        return losses
    if config.ctc_loss_reduction == "mean":
        return losses / target_lengths.clamp_min(1)
    raise ValueError(f"model.config.ctc_loss_reduction must be 'mean' or 'sum', got {config.ctc_loss_reduction!r}")


def sample_ctc_labels(logits: Tensor, blank: int, generator: torch.Generator) -> Tensor:
    """A label sequence drawn from the model: one id per frame from softmax(`logits` (frames, vocab)), repeats
    collapsed, blanks dropped. Uses exactly `frames` uniform numbers from the CPU `generator`. May be empty."""
    cdf = torch.softmax(logits.detach().double().cpu(), dim=-1).cumsum(-1)
    uniform = torch.rand(cdf.shape[0], 1, generator=generator, dtype=torch.float64) * cdf[:, -1:]
    path = torch.searchsorted(cdf, uniform, right=True).squeeze(-1).clamp_max(cdf.shape[1] - 1)
    new_run = torch.ones_like(path, dtype=torch.bool)
    new_run[1:] = path[1:] != path[:-1]
    return path[new_run & (path != blank)]


def utterance_generator(seed: int, position: int) -> torch.Generator:
    """The generator of the labels sampled for the utterance at `position` of the chosen list: the same draws
    whatever the batching or the process that handles the utterance. Its 32-bit seed (what torch's CPU generator
    uses of it) is a hash of both numbers."""
    digest = hashlib.sha256(f"fisher-labels-{seed}-{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:4], "little"))


def encoded_utterances(batches: Iterable[Mapping[str, Any]], need_labels: bool) -> Iterator[EncodedUtterance]:
    """Unpadded utterances from batch dicts (`input_values` (batch, samples) or (samples,), optional right-padded
    `attention_mask`, `labels` padded with -100)."""
    for index, batch in enumerate(batches):
        if need_labels and "labels" not in batch:
            raise ValueError(f"batch {index} has no 'labels': the empirical Fisher needs reference transcripts")
        audio = torch.as_tensor(batch["input_values"])
        labels = torch.as_tensor(batch.get("labels", torch.empty(0, dtype=torch.long)))
        if audio.dim() == 1:
            audio, labels = audio[None], labels[None]
        lengths = [audio.shape[1]] * audio.shape[0]
        if batch.get("attention_mask") is not None:
            valid = torch.as_tensor(batch["attention_mask"]).bool()
            lengths = valid.sum(-1)
            if not bool((valid == (torch.arange(valid.shape[1]) < lengths[:, None])).all()):
                raise ValueError(f"batch {index}: attention_mask must be ones then zeros (right padding)")
            lengths = lengths.tolist()
        for b, length in enumerate(lengths):
            row = labels[b] if labels.numel() else labels.reshape(-1)
            yield EncodedUtterance(audio[b, :length], row[row != IGNORE_INDEX].long())


def fisher_sums(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, kind: Literal["empirical", "sampled"],
                loss: FisherLoss, draws: int = 1, batch_size: int = 1, samples: int | None = None, seed: int = 0,
                positions: Sequence[int] | None = None, progress: bool = False) -> tuple[dict[str, Tensor], int]:
    """Σₙ (∂ℓₙ/∂θ)² over the utterances of `batches` (see the module docstring for ℓₙ), float32 per parameter with
    `requires_grad=True`, at the model's current weights in eval mode (restored after), and their number.

    `batches` yields dicts with `input_values` (batch, samples) float32, optional `attention_mask` (batch, samples)
    and `labels` (batch, label_len) padded with -100 (a batch of one may drop the batch axis); they are regrouped
    into `batch_size` utterances: 1 runs the one-at-a-time loop, more the batched per-utterance-gradient path (same
    result). The first `samples` utterances are used (all when None; fewer raise). `kind="sampled"` draws `draws`
    label sequences per utterance with `utterance_generator(seed, position)`, `positions` being the utterances'
    places in the chosen list (0, 1, 2, ... when None; a process's shard otherwise). `kind="empirical"` uses one
    target, the reference.
    """
    if kind not in ("empirical", "sampled"):
        raise ValueError(f"kind must be 'empirical' or 'sampled', got {kind!r}")
    for arg, value in (("draws", draws), ("batch_size", batch_size), ("samples", 1 if samples is None else samples)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    draws = draws if kind == "sampled" else 1
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no parameter with requires_grad=True: nothing to estimate")
    sampler = SquaredGradSampler(model, {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()})
    places = iter(positions) if positions is not None else itertools.count()
    was_training, count = model.training, 0
    model.eval()
    try:
        utterances = itertools.islice(encoded_utterances(batches, need_labels=kind == "empirical"), samples)
        with tqdm(total=samples, desc=f"fisher ({kind})", unit="utt", disable=not progress) as bar:
            for group in iter(lambda: list(itertools.islice(utterances, batch_size)), []):
                generators = [utterance_generator(seed, next(places)) for _ in group]
                count += _accumulate(sampler, group, params, kind, loss, draws, generators)
                bar.update(len(group))
    finally:
        model.train(was_training)
    if count == 0 or (samples is not None and count < samples):
        raise ValueError(f"the Fisher needs {samples or 'at least 1'} utterances, the batches held {count}")
    return sampler.sums, count


def estimate_fisher(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, kind: Literal["empirical", "sampled"],
                    loss: FisherLoss = "log_likelihood", draws: int = 1, batch_size: int = 1,
                    normalize: Literal["none", "max", "mean"] = "none", samples: int | None = None, seed: int = 0,
                    progress: bool = False) -> Importance:
    """The diagonal Fisher of the task that `batches` sample, in one process: `fisher_sums`, then the mean over the
    utterances normalised by one global scale (`forgetting.methods.importance.normalised`)."""
    sums, count = fisher_sums(model, batches, kind=kind, loss=loss, draws=draws, batch_size=batch_size, samples=samples,
                              seed=seed, progress=progress)
    return normalised(sums, count, normalize, kind=kind, loss=loss, draws=draws if kind == "sampled" else 1,
                      ctc_loss_reduction=model.config.ctc_loss_reduction)


def _accumulate(sampler: SquaredGradSampler, batch: list[EncodedUtterance], params: Mapping[str, nn.Parameter], kind: str,
                loss: FisherLoss, draws: int, generators: Sequence[torch.Generator]) -> int:
    """Add one group of utterances' squared gradients into `sampler.sums`; returns the number of utterances."""
    model = sampler.model

    def targets_for(b: int, logits: Tensor) -> list[Tensor]:
        if kind == "empirical":
            return [batch[b].labels]
        return [sample_ctc_labels(logits, model.config.pad_token_id, generators[b]) for _ in range(draws)]

    def loss_fn(logits: Tensor, mask: Tensor, targets: list[Tensor]) -> Tensor:
        labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
        return utterance_ctc_losses(model, logits, mask, labels.to(logits.device), loss)

    audio = [u.input_values for u in batch]
    if len(batch) > 1 and padding_is_safe(model, audio):
        accumulate_batched(sampler, audio, targets_for, loss_fn, params)
    else:
        accumulate_looped(model, audio, targets_for, loss_fn, params, sampler.sums)
    return len(batch)
