"""The diagonal Fisher of the source task: its estimation from per-utterance gradients, its file, and its
statistics by layer. The penalty that uses it is in `forgetting.penalty`.

Fisher: Fᵢ = (1/N)·Σₙ (∂ℓₙ/∂θᵢ)², per utterance n (never the square of a mini-batch gradient), at the pretrained
weights, model in eval mode. ℓₙ is the CTC loss training uses, per utterance: divided by the target length when
`config.ctc_loss_reduction == "mean"` (clamped to ≥ 1, as `torch.nn.functional.ctc_loss` does, so an empty target
divides by 1), not divided when "sum". `kind="empirical"` differentiates the loss of the reference transcript;
`kind="sampled"` the loss of label sequences drawn from the model's own frame posteriors (the true Fisher's
Monte-Carlo estimate), averaging the squared gradient over `draws` sequences per utterance.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from forgetting.corpus import Utterance
from forgetting.errors import InputError
from forgetting.grad_sample import SquaredGradSampler, accumulate_batched, accumulate_looped, padding_is_safe
from forgetting.io import atomic_path, file_sha256


class FisherError(InputError):
    """A Fisher file that cannot be used: cut, foreign, or of another model or parameter set."""


IGNORE_INDEX = -100  # label padding, as in transformers' CTC loss


@dataclass(frozen=True)
class EncodedUtterance:
    """One source-language utterance as the model reads it: `input_values` (samples,) float32 16 kHz audio
    normalised to zero mean and unit variance, unpadded; `labels` (label_len,) int64 vocabulary ids, unpadded."""

    input_values: Tensor
    labels: Tensor


@dataclass(frozen=True)
class Fisher:
    """A diagonal Fisher: `tensors` maps parameter names to float32 tensors of the parameters' shapes, on the
    model's device, already divided by `scale` (1.0 when `normalize="none"`); `samples` utterances, `draws` label
    sequences per utterance."""

    tensors: dict[str, Tensor]
    kind: str
    samples: int
    draws: int
    normalize: str
    scale: float
    ctc_loss_reduction: str

    def summary(self) -> dict[str, object]:
        """What this Fisher is, for the fisher stage's metrics: its definition, size and largest entry."""
        return {"kind": self.kind, "samples": self.samples, "draws": self.draws, "normalize": self.normalize,
                "scale": self.scale, "ctc_loss_reduction": self.ctc_loss_reduction,
                "entries": sum(t.numel() for t in self.tensors.values()),
                "max": max(float(t.max()) for t in self.tensors.values())}

    def metadata(self, model_sha256: str) -> dict[str, str]:
        """The safetensors metadata of this Fisher for the model whose weights file has this sha256."""
        return {"kind": self.kind, "samples": str(self.samples), "draws": str(self.draws), "normalize": self.normalize,
                "scale": repr(self.scale), "ctc_loss_reduction": self.ctc_loss_reduction, "model_sha256": model_sha256}


def choose_utterances(utterances: Sequence[Utterance], samples: int, seed: int) -> list[Utterance]:
    """`samples` utterances drawn with `random.Random(seed)`, longest first (so batches hold little padding)."""
    if len(utterances) < samples:
        raise ValueError(f"fisher.samples = {samples}, but the split holds only {len(utterances)} utterances")
    return sorted(random.Random(seed).sample(list(utterances), samples), key=lambda u: -(u.duration_s or 0))


def utterance_ctc_losses(model: nn.Module, logits: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
    """Per-utterance CTC loss (batch,) as training defines it, from `logits` (batch, frames, vocab), the audio
    `attention_mask` (batch, samples) and `labels` (batch, label_len) padded with -100 (blank ids are ignored too,
    as transformers does). Divided by the target length (≥ 1) when the model's reduction is "mean". Computed in
    float64: the same loss as training's float32 one, but float32 CTC gradients carry ~1e-5 relative rounding,
    which would swamp the agreement of the looped and batched Fisher paths (~1e-7 in float64)."""
    config = model.config
    frames = model._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()
    keep = (labels != IGNORE_INDEX) & (labels != config.pad_token_id)
    target_lengths = keep.sum(-1)
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float64).transpose(0, 1)
    with torch.backends.cudnn.flags(enabled=False):
        losses = F.ctc_loss(log_probs, labels.masked_select(keep), frames, target_lengths, blank=config.pad_token_id,
                            reduction="none", zero_infinity=config.ctc_zero_infinity)
    if config.ctc_loss_reduction == "mean":
        return losses / target_lengths.clamp_min(1)
    if config.ctc_loss_reduction == "sum":
        return losses
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


def _utterances(batches: Iterable[Mapping[str, Any]], need_labels: bool) -> Iterator[EncodedUtterance]:
    """Unpadded utterances from batch dicts (`input_values` (batch, samples) or (samples,), optional right-padded
    `attention_mask`, `labels` padded with -100)."""
    for index, batch in enumerate(batches):
        if need_labels and "labels" not in batch:
            raise ValueError(f"batch {index} has no 'labels': kind='empirical' needs reference transcripts")
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


def estimate_fisher(model: nn.Module, batches: Iterable[Mapping[str, Any]], *, kind: Literal["empirical", "sampled"],
                    draws: int = 1, batch_size: int = 1, normalize: Literal["none", "max", "mean"] = "none",
                    samples: int | None = None, generator: torch.Generator | None = None,
                    progress: bool = False) -> Fisher:
    """The diagonal Fisher of the task that `batches` sample, at the model's current weights (see module docstring).

    `batches` yields dicts with `input_values` (batch, samples) float32, optional `attention_mask` (batch, samples)
    and `labels` (batch, label_len) padded with -100 (a batch of one may drop the batch axis); they are regrouped
    into `batch_size` utterances: 1 runs the one-at-a-time loop, more the batched per-utterance-gradient path (same
    result). The first `samples` utterances are used (all when None; fewer raise). `kind="sampled"` needs a CPU
    `generator`; labels are drawn per utterance in order, `draws` each, so both paths draw the same sequences;
    `kind="empirical"` uses one target, the reference (draws recorded as 1). Only parameters with
    `requires_grad=True` get a Fisher. `normalize` divides every entry by one global scale: the maximum ("max") or
    the mean ("mean") over all entries of all tensors. The model is in eval mode during estimation, restored after.
    """
    if kind not in ("empirical", "sampled"):
        raise ValueError(f"kind must be 'empirical' or 'sampled', got {kind!r}")
    if normalize not in ("none", "max", "mean"):
        raise ValueError(f"normalize must be 'none', 'max' or 'mean', got {normalize!r}")
    for arg, value in (("draws", draws), ("batch_size", batch_size), ("samples", 1 if samples is None else samples)):
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    if kind == "sampled" and generator is None:
        raise ValueError("kind='sampled' needs an explicit torch.Generator (seeded from params)")
    draws = draws if kind == "sampled" else 1
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model has no parameter with requires_grad=True: nothing to estimate")
    sampler = SquaredGradSampler(model, {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()})
    was_training, count = model.training, 0
    model.eval()
    try:
        utterances = itertools.islice(_utterances(batches, need_labels=kind == "empirical"), samples)
        with tqdm(total=samples, desc=f"fisher ({kind})", unit="utt", disable=not progress) as bar:
            for group in iter(lambda: list(itertools.islice(utterances, batch_size)), []):
                count += _accumulate(sampler, group, params, kind, draws, generator)
                bar.update(len(group))
    finally:
        model.train(was_training)
    if count == 0 or (samples is not None and count < samples):
        raise ValueError(f"Fisher needs {samples or 'at least 1'} utterances, the batches held {count}")
    finite = torch.stack([torch.isfinite(s).all() for s in sampler.sums.values()]).tolist()
    if not all(finite):
        bad = [n for n, ok in zip(sampler.sums, finite, strict=True) if not ok]
        raise ValueError(f"Fisher of {bad} is not finite (an infeasible CTC target with ctc_zero_infinity=False?)")
    # The statistic of the sums over N is that of the mean (1/N)·Σ: one global scale, the same for every tensor.
    scale = 1.0 if normalize == "none" else _global_statistic(sampler.sums.values(), normalize) / count
    tensors = {n: s.div_(scale * count) for n, s in sampler.sums.items()}
    return Fisher(tensors, kind, count, draws, normalize, scale, model.config.ctc_loss_reduction)


def _accumulate(sampler: SquaredGradSampler, batch: list[EncodedUtterance], params: Mapping[str, nn.Parameter], kind: str,
                draws: int, generator: torch.Generator | None) -> int:
    """Add one group of utterances' squared gradients into `sampler.sums`; returns the number of utterances."""
    model = sampler.model

    def targets_for(b: int, logits: Tensor) -> list[Tensor]:
        if kind == "empirical":
            return [batch[b].labels]
        return [sample_ctc_labels(logits, model.config.pad_token_id, generator) for _ in range(draws)]

    def loss_fn(logits: Tensor, mask: Tensor, targets: list[Tensor]) -> Tensor:
        labels = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True, padding_value=IGNORE_INDEX)
        return utterance_ctc_losses(model, logits, mask, labels.to(logits.device))

    audio = [u.input_values for u in batch]
    if len(batch) > 1 and padding_is_safe(model, audio):
        accumulate_batched(sampler, audio, targets_for, loss_fn, params)
    else:
        accumulate_looped(model, audio, targets_for, loss_fn, params, sampler.sums)
    return len(batch)


def _global_statistic(tensors: Iterable[Tensor], normalize: str) -> float:
    """The maximum ("max") or the mean ("mean", float64 sum) over all entries of all tensors; must be > 0."""
    tensors = list(tensors)
    if normalize == "max":
        scale = float(torch.stack([t.max() for t in tensors]).max())
    else:
        scale = float(torch.stack([t.double().sum() for t in tensors]).sum()) / sum(t.numel() for t in tensors)
    if not scale > 0:
        raise ValueError(f"cannot normalize the Fisher by its {normalize}: it is {scale} (all gradients zero?)")
    return scale


def save_fisher(path: str | os.PathLike[str], fisher: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write the Fisher tensors and string metadata as safetensors, atomically.

    The metadata goes in as one sorted-JSON entry (`"fisher"`): safetensors writes several entries in hash
    order, which changes the file's bytes from run to run and makes DVC re-run adapt for nothing.
    """
    bad = [key for key, value in metadata.items() if not isinstance(value, str)]
    if bad:
        raise TypeError(f"Fisher metadata values must be str; not for keys {bad}")
    with atomic_path(Path(path)) as tmp:
        save_file({n: t.detach().float().contiguous().cpu() for n, t in fisher.items()}, tmp,
                  metadata={"fisher": json.dumps(dict(metadata), sort_keys=True)})


def load_fisher(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a Fisher written by `save_fisher`: (tensors by parameter name, metadata). A cut file, or a safetensors
    file without the Fisher's metadata, raises FisherError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("fisher", "{}"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise FisherError(f"{path}: not a complete Fisher file ({err}); run `dvc repro fisher`") from err
    missing = [key for key in ("kind", "normalize", "model_sha256") if key not in metadata]
    if missing:
        raise FisherError(f"{path}: no Fisher metadata {missing}: not written by the fisher stage; run `dvc repro fisher`")
    return tensors, metadata


def check_fisher_matches(path: Path, metadata: Mapping[str, str], weights: Path) -> None:
    """Raise FisherError unless the Fisher at `path` (its `metadata`) was estimated at the weights file `weights`."""
    if metadata.get("model_sha256") != file_sha256(weights):
        raise FisherError(f"{path} was estimated for another model than {weights}: run `dvc repro fisher`")


_NUMBERED = re.compile(r"^((?:feature_extractor\.conv_layers|encoder\.layers)\.\d+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: `wav2vec2.encoder.layers.3.attention.q_proj.weight` -> `encoder.layers.3`,
    `lm_head.bias` -> `lm_head`, `wav2vec2.encoder.pos_conv_embed.conv.weight_g` -> `encoder.pos_conv_embed`."""
    name = name.removeprefix("wav2vec2.")
    numbered = _NUMBERED.match(name)
    if numbered:
        return numbered.group(1)
    modules = name.split(".")[:-1]  # without the parameter's own name
    return ".".join(modules[:2]) if modules else name


def fisher_by_layer(fisher: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per layer, in model order: entries, sum, mean and max of the Fisher, and its share of the total sum."""
    layers: dict[str, dict[str, float]] = {}
    for name, tensor in fisher.items():
        stats = layers.setdefault(layer_of(name), {"entries": 0, "sum": 0.0, "max": 0.0})
        stats["entries"] += tensor.numel()
        stats["sum"] += float(tensor.double().sum())
        stats["max"] = max(stats["max"], float(tensor.max()))
    total = sum(s["sum"] for s in layers.values()) or 1.0
    for stats in layers.values():
        stats["mean"] = stats["sum"] / stats["entries"]
        stats["share"] = stats["sum"] / total
    return layers
