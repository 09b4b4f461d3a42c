"""The quadratic penalty (λ/2)·Σᵢ Ωᵢ·(θᵢ − θ*ᵢ)², the ½ included, θ* the pretrained weights: elastic weight
consolidation with Ω the diagonal Fisher (`forgetting.methods.fisher`), memory aware synapses with Ω the MAS importance
(`forgetting.methods.mas`), and the L2 baseline with Ω = 1.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from forgetting.curves import TRAIN_PENALTY
from forgetting.training.regulariser import Regulariser


def ewc_penalty(params: Mapping[str, Tensor], fisher: Mapping[str, Tensor], anchor: Mapping[str, Tensor],
                lam: float) -> Tensor:
    """Reference (λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)² over the names in `fisher`, by plain autograd (model-sized temporaries)."""
    missing = [name for name in fisher if name not in params or name not in anchor]
    if missing:
        raise KeyError(f"parameters with a Fisher but no value or anchor: {missing}")
    total = sum((fisher[n] * (params[n] - anchor[n]).square()).sum() for n in fisher)
    return 0.5 * lam * torch.as_tensor(total)


class EWCPenalty(Regulariser):
    """The penalty (λ/2)·Σᵢ Fᵢ·(θᵢ − θ*ᵢ)² (½ included) over every trainable parameter of the model, F the importance
    (a Fisher, or MAS's).

    Holds F and θ* once each, copied at construction (θ* = the weights then), in `dtype` (float32, or bfloat16 to
    halve the memory; θ − θ* is then computed in float32 from the rounded θ*). `fisher=None` uses F = 1 (the L2
    baseline) and stores no F. λ = 0 runs the same code (value 0, gradient contribution 0). Every trainable
    parameter needs an importance of its shape, and every importance name must be a model parameter (one for a frozen
    parameter is allowed and unused: θ = θ* there, so its term is 0); anything else raises, naming the parameter.

    Its gradient λ·F·(θ − θ*) does not depend on the batch, and θ does not change within an accumulation cycle, so
    the training core adds it once per optimiser step (`add_gradient`), after the micro-batches' gradients have been
    accumulated and reduced across processes and before clipping: under DistributedDataParallel every process holds
    the same θ and adds the same gradient, which no reduction then overwrites. Its value is computed only when it is
    logged (`value`). Work is done tensor group by tensor group with `torch._foreach_*` ops in one float32 workspace
    the size of the largest parameter tensor, allocated once: with a float32 F nothing is allocated per step (fresh
    temporaries cost more than the arithmetic on a CPU; a bfloat16 F is widened one tensor at a time).
    """

    curve = TRAIN_PENALTY

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
        self._model: weakref.ReferenceType[nn.Module] | None = None
        self._params: list[Tensor] = []

    def held_bytes(self) -> int:
        """Bytes held by this object: F, θ* and the float32 workspace (the size of the largest parameter tensor)."""
        tensors = [t for group in self._anchor_groups + self._fisher_groups for t in group] + [self._workspace]
        return sum(t.numel() * t.element_size() for t in tensors)

    def value(self, model: nn.Module) -> Tensor:
        """The penalty at the model's current weights: a float32 scalar, without autograd."""
        with torch.no_grad():
            return self._value(self._anchored(model))

    def add_gradient(self, model: nn.Module, scale: float = 1.0) -> None:
        """p.grad += scale·λ·F·(θ − θ*) for every anchored parameter (a missing `.grad` is created)."""
        self._add_grad(self._anchored(model), scale * self.lam)

    def _anchored(self, model: nn.Module) -> list[Tensor]:
        """The model's anchored parameters, in the order of F and θ*; F, θ* and the workspace follow the model's device."""
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
        if self._workspace.device != device:  # the Trainer moved the model after construction
            self._anchor_groups = [[t.to(device) for t in group] for group in self._anchor_groups]
            self._fisher_groups = [[t.to(device) for t in group] for group in self._fisher_groups]
            self._workspace = self._workspace.to(device)
        return self._params

    def _diffs(self, index: Sequence[int], anchors: Sequence[Tensor], params: Sequence[Tensor]) -> list[Tensor]:
        """θ − θ* (float32) for one group, written into views of the workspace."""
        diffs, offset = [], 0
        for i, anchor in zip(index, anchors, strict=True):
            p = params[i]
            diffs.append(torch.sub(p, anchor, out=self._workspace[offset:offset + p.numel()].view(p.shape)))
            offset += p.numel()
        return diffs

    def _value(self, params: Sequence[Tensor]) -> Tensor:
        """(λ/2)·Σ F·(θ − θ*)², a float32 scalar."""
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
        """p.grad += scale·F·(θ − θ*) for every anchored parameter."""
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
