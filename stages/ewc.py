"""Elastic weight consolidation: the diagonal Fisher of the source task, its file format, and the penalty.

Fisher: Fᵢ = (1/N)·Σₙ (∂ℓₙ/∂θᵢ)², per utterance n (never the square of a mini-batch gradient), at the pretrained
weights, model in eval mode. ℓₙ is the CTC loss training uses, per utterance: divided by the target length when
`config.ctc_loss_reduction == "mean"` (clamped to ≥ 1, as `torch.nn.functional.ctc_loss` does, so an empty target
divides by 1), not divided when "sum". `kind="empirical"` differentiates the loss of the reference transcript;
`kind="sampled"` the loss of label sequences drawn from the model's own frame posteriors (the true Fisher's
Monte-Carlo estimate), averaging the squared gradient over `draws` sequences per utterance.

Penalty: (λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)², the ½ included, θ* the pretrained weights; without a Fisher F = 1 (L2).
"""

from __future__ import annotations

import itertools
import json
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from stages.grad_sample import SquaredGradSampler, accumulate_batched, accumulate_looped, padding_is_safe

IGNORE_INDEX = -100  # label padding, as in transformers' CTC loss


@dataclass(frozen=True)
class Utterance:
    """One source-language utterance: `input_values` (samples,) float32 16 kHz audio normalised to zero mean and
    unit variance, unpadded; `labels` (label_len,) int64 vocabulary ids, unpadded."""

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

    def metadata(self, model_sha256: str) -> dict[str, str]:
        """The safetensors metadata of this Fisher for the model whose weights file has this sha256."""
        return {"kind": self.kind, "samples": str(self.samples), "draws": str(self.draws), "normalize": self.normalize,
                "scale": repr(self.scale), "ctc_loss_reduction": self.ctc_loss_reduction, "model_sha256": model_sha256}


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


def _utterances(batches: Iterable[Mapping[str, Any]], need_labels: bool) -> Iterator[Utterance]:
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
            yield Utterance(audio[b, :length], row[row != IGNORE_INDEX].long())


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


def _accumulate(sampler: SquaredGradSampler, batch: list[Utterance], params: Mapping[str, nn.Parameter], kind: str,
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
    """Write the Fisher tensors and string metadata as safetensors, atomically (temp file, then os.replace).

    The metadata goes in as one sorted-JSON entry (`"fisher"`): safetensors writes several entries in hash
    order, which changes the file's bytes from run to run and makes DVC re-run adapt for nothing.
    """
    path = Path(path)
    bad = [key for key, value in metadata.items() if not isinstance(value, str)]
    if bad:
        raise TypeError(f"Fisher metadata values must be str; not for keys {bad}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({n: t.detach().float().contiguous().cpu() for n, t in fisher.items()}, tmp,
                  metadata={"fisher": json.dumps(dict(metadata), sort_keys=True)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_fisher(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a Fisher written by `save_fisher`: (tensors by parameter name, metadata)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = json.loads((f.metadata() or {}).get("fisher", "{}"))
        return {name: f.get_tensor(name) for name in f.keys()}, metadata  # noqa: SIM118


def ewc_penalty(params: Mapping[str, Tensor], fisher: Mapping[str, Tensor], anchor: Mapping[str, Tensor],
                lam: float) -> Tensor:
    """Reference (λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)² over the names in `fisher`, by plain autograd (model-sized temporaries)."""
    missing = [name for name in fisher if name not in params or name not in anchor]
    if missing:
        raise KeyError(f"parameters with a Fisher but no value or anchor: {missing}")
    total = sum((fisher[n] * (params[n] - anchor[n]).square()).sum() for n in fisher)
    return 0.5 * lam * torch.as_tensor(total)


class _PenaltyFunction(torch.autograd.Function):
    """Forward: the penalty value. Backward: queues `EWCPenalty._add_grad` for the end of the backward pass and
    returns no gradient through autograd, so no model-sized gradient tensor is ever built or returned. The only
    tensor input is a token that requires grad: it makes autograd call the backward, while the 200-odd parameters
    travel as a plain list (as inputs they would cost graph edges and saved tensors every micro-batch)."""

    @staticmethod
    def forward(ctx: Any, token: Tensor, penalty: EWCPenalty, params: list[Tensor]) -> Tensor:
        ctx.penalty, ctx.params = penalty, params
        return penalty._value(params)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[None, None, None]:
        # A Python float lets the gradient go in with one fused op (costs one host sync per backward on a GPU).
        penalty, params, scale = ctx.penalty, ctx.params, float(grad_output) * ctx.penalty.lam
        torch.autograd.Variable._execution_engine.queue_callback(lambda: penalty._add_grad(params, scale))
        return None, None, None


class EWCPenalty:
    """The EWC penalty (λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)² (½ included) over every trainable parameter of the model.

    Holds F and θ* once each, copied at construction (θ* = the weights then), in `dtype` (float32, or bfloat16 to
    halve the memory; θ − θ* is then computed in float32 from the rounded θ*). `fisher=None` uses F = 1 (the L2
    baseline) and stores no F. λ = 0 runs the same code (value 0, gradient contribution 0). Every trainable
    parameter needs a Fisher of its shape, and every Fisher name must be a model parameter (a Fisher for a frozen
    parameter is allowed and unused: θ = θ* there, so its term is 0); anything else raises, naming the parameter.

    `penalty(model)` returns a scalar that requires grad; the training core adds it to the CTC loss of every
    micro-batch. Its backward adds λ·F·(θ − θ*)·grad_output into each `p.grad` in place (creating it if None) when
    the backward pass ends, after the CTC gradients have been accumulated, so EWC never makes gradient buffers exist
    earlier than training does. grad_output carries the loss scaling (fp16 GradScaler) and the Trainer's division by
    the gradient-accumulation steps, so the penalty is scaled consistently with the CTC loss and counted exactly once
    per optimiser step (θ does not change within an accumulation cycle, so this is exact). Work is done tensor group
    by tensor group with `torch._foreach_*` ops in one float32 workspace the size of the largest parameter tensor,
    allocated once: with a float32 F nothing is allocated per step (fresh temporaries cost more than the arithmetic
    on a CPU; a bfloat16 F is widened one tensor at a time) and nothing model-sized is saved for backward. Use it
    with `.backward()` (as the Trainer does), not `torch.autograd.grad`, double backward or DistributedDataParallel:
    the gradient is written outside autograd's accumulation, which those never see.
    """

    def __init__(self, model: nn.Module, fisher: Mapping[str, Tensor] | None, lam: float,
                 dtype: torch.dtype = torch.float32) -> None:
        if not lam >= 0 or lam == float("inf"):
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        all_params = dict(model.named_parameters())
        trainable = {n: p for n, p in all_params.items() if p.requires_grad}
        if not trainable:
            raise ValueError("model has no parameter with requires_grad=True: nothing to anchor")
        self.lam, self.names = float(lam), list(trainable)
        fishers: list[Tensor] = []
        if fisher is not None:
            unknown = [n for n in fisher if n not in all_params]
            missing = [n for n in trainable if n not in fisher]
            if unknown or missing:
                raise KeyError(f"Fisher does not match the model: not model parameters {unknown}; "
                               f"trainable parameters without a Fisher {missing}")
            for name, p in trainable.items():
                if fisher[name].shape != p.shape:
                    raise ValueError(f"Fisher of {name} has shape {tuple(fisher[name].shape)}, parameter {tuple(p.shape)}")
                if not bool(torch.isfinite(fisher[name]).all()) or bool((fisher[name] < 0).any()):
                    raise ValueError(f"Fisher of {name} has negative or non-finite entries")
                fishers.append(fisher[name].detach().to(device=p.device, dtype=dtype, copy=True))
        anchors = [p.detach().to(dtype, copy=True) for p in trainable.values()]
        # Groups of consecutive tensors, each no larger in total than the largest tensor: the temporaries' bound.
        budget, self._index_groups, size = max(a.numel() for a in anchors), [[]], 0
        for i, anchor in enumerate(anchors):
            if size + anchor.numel() > budget:
                self._index_groups.append([])
                size = 0
            self._index_groups[-1].append(i)
            size += anchor.numel()
        self._anchor_groups = [[anchors[i] for i in index] for index in self._index_groups]
        self._fisher_groups = [[fishers[i] for i in index] if fishers else [] for index in self._index_groups]
        self._workspace = torch.empty(budget, dtype=torch.float32, device=anchors[0].device)
        self._token = torch.zeros((), device=anchors[0].device, requires_grad=True)
        self._model: weakref.ReferenceType[nn.Module] | None = None
        self._params: list[Tensor] = []

    def held_bytes(self) -> int:
        """Bytes held by this object: F, θ* and the float32 workspace (the size of the largest parameter tensor)."""
        tensors = [t for group in self._anchor_groups + self._fisher_groups for t in group] + [self._workspace]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __call__(self, model: nn.Module) -> Tensor:
        """The penalty at the model's current weights: a scalar (float32) that requires grad."""
        if self._model is None or self._model() is not model:  # resolve names once per model object
            found = dict(model.named_parameters())
            missing = [n for n in self.names if n not in found]
            if missing:
                raise KeyError(f"model lacks anchored parameters {missing}")
            self._model, self._params = weakref.ref(model), [found[n] for n in self.names]
        frozen = [n for n, p in zip(self.names, self._params, strict=True) if not p.requires_grad]
        if frozen:
            raise ValueError(f"anchored parameters were frozen after the penalty was built: {frozen}")
        device = self._params[0].device
        if self._token.device != device:  # the Trainer moved the model after construction
            self._token = self._token.to(device).requires_grad_(True)
            self._anchor_groups = [[t.to(device) for t in group] for group in self._anchor_groups]
            self._fisher_groups = [[t.to(device) for t in group] for group in self._fisher_groups]
            self._workspace = self._workspace.to(device)
        return _PenaltyFunction.apply(self._token, self, self._params)

    def _diffs(self, index: Sequence[int], anchors: Sequence[Tensor], params: Sequence[Tensor]) -> list[Tensor]:
        """θ − θ* (float32) for one group, written into views of the workspace."""
        diffs, offset = [], 0
        for i, anchor in zip(index, anchors, strict=True):
            p = params[i]
            diffs.append(torch.sub(p, anchor, out=self._workspace[offset:offset + p.numel()].view(p.shape)))
            offset += p.numel()
        return diffs

    def _value(self, params: Sequence[Tensor]) -> Tensor:
        """(λ/2)·Σ F·(θ − θ*)², a float32 scalar; runs without grad (inside the autograd Function)."""
        sums: list[Tensor] = []
        for index, anchors, fishers in zip(self._index_groups, self._anchor_groups, self._fisher_groups, strict=True):
            diffs = self._diffs(index, anchors, params)
            torch._foreach_mul_(diffs, diffs)
            if fishers:  # one multiply-and-sum per tensor, nothing written (dot wants one dtype: bfloat16 F widened)
                sums.extend(torch.dot(d.view(-1), f.view(-1).float()) for d, f in zip(diffs, fishers, strict=True))
            else:
                sums.extend(torch._foreach_norm(diffs, 1))  # entries are ≥ 0: the L1 norm is the sum
        return torch.stack(sums).sum() * (0.5 * self.lam)

    def _add_grad(self, params: Sequence[Tensor], scale: float) -> None:
        """p.grad += scale·F·(θ − θ*) for every anchored parameter (scale = λ·grad_output)."""
        with torch.no_grad():
            for index, anchors, fishers in zip(self._index_groups, self._anchor_groups, self._fisher_groups, strict=True):
                group = [params[i] for i in index]
                for p in group:
                    if p.grad is None:  # a parameter the loss does not reach
                        p.grad = torch.zeros_like(p)
                diffs = self._diffs(index, anchors, params)
                if fishers:
                    torch._foreach_addcmul_([p.grad for p in group], diffs, fishers, value=scale)
                else:
                    torch._foreach_add_([p.grad for p in group], diffs, alpha=scale)
