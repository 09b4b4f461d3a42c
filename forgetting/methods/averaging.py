"""Weight averaging after adaptation (Wortsman et al. 2022's WiSE-FT): θ = (1 − α)·θ* + α·θ_adapted, with θ* the
pretrained weights. α = 1 keeps the adapted model, α = 0 gives back the pretrained one, both bit for bit."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


def average_weights(anchor: Mapping[str, Tensor], adapted: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 − α)·anchor + α·adapted for every floating-point tensor of two state dicts (same shapes, dtypes); integer
    and bool tensors (counters, masks) are copied from `adapted`, and so is a tensor only `adapted` has (the mask
    embedding, when only adapt masks time: it has no θ*). Each result is a new tensor in the dtype of its inputs.
    α = 0 copies `anchor` and α = 1 copies `adapted`, bit for bit: `torch.lerp` rounds nothing there, but turns a
    −0.0 into +0.0 (−0.0 + 0·d) and an infinite difference into NaN. A tensor only `anchor` has, or a mismatch,
    raises, naming the tensor."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"average.alpha must be in [0, 1], got {alpha}")
    if only_anchor := sorted(anchor.keys() - adapted.keys()):
        raise KeyError(f"the state dicts differ: only in the pretrained model {only_anchor}")
    averaged = {}
    for name, theta in adapted.items():
        if name not in anchor:
            averaged[name] = theta.clone()
            continue
        star = anchor[name]
        if star.shape != theta.shape or star.dtype != theta.dtype:
            raise ValueError(f"{name}: pretrained {tuple(star.shape)} {star.dtype}, adapted {tuple(theta.shape)} {theta.dtype}")
        if alpha == 0.0 and theta.is_floating_point():
            averaged[name] = star.clone()
        elif alpha == 1.0 or not theta.is_floating_point():
            averaged[name] = theta.clone()
        else:
            averaged[name] = torch.lerp(star, theta.to(star.device), alpha)
    return averaged
