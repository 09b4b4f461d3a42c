"""The importance of each weight for the source task, as the importance stage writes it and the penalty reads it: the
diagonal Fisher (`forgetting.methods.fisher`) or the MAS importance (`forgetting.methods.mas`), turned from
per-utterance sums into a mean, normalised by one global scale, written with its definition, read back and checked,
and summarised by layer.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from forgetting.errors import InputError
from forgetting.io import atomic_path, file_sha256

RERUN = "run `dvc repro importance`"


class ImportanceError(InputError):
    """An importance file that cannot be used: cut, foreign, of another model, parameter set or method."""


@dataclass(frozen=True)
class Importance:
    """A per-parameter importance: `tensors` maps parameter names to float32 tensors of the parameters' shapes, the
    mean over `samples` utterances divided by `scale` (1.0 when `normalize="none"`). `kind` is "empirical" or
    "sampled" (the Fisher) or "mas"; `loss` is the Fisher's differentiated loss ("log_likelihood" or
    "training_loss"; "" for MAS); `draws` label sequences per utterance (sampled Fisher; 1 otherwise)."""

    tensors: dict[str, Tensor]
    kind: str
    loss: str
    samples: int
    draws: int
    normalize: str
    scale: float
    ctc_loss_reduction: str

    def summary(self) -> dict[str, object]:
        """What this importance is, for the importance stage's metrics: its definition, size and largest entry."""
        return {"kind": self.kind, "loss": self.loss, "samples": self.samples, "draws": self.draws,
                "normalize": self.normalize, "scale": self.scale, "ctc_loss_reduction": self.ctc_loss_reduction,
                "entries": sum(t.numel() for t in self.tensors.values()),
                "max": max(float(t.max()) for t in self.tensors.values())}

    def metadata(self, model_sha256: str) -> dict[str, str]:
        """The file metadata of this importance, for the model whose weights file has this sha256."""
        return {"kind": self.kind, "loss": self.loss, "samples": str(self.samples), "draws": str(self.draws),
                "normalize": self.normalize, "scale": repr(self.scale), "ctc_loss_reduction": self.ctc_loss_reduction,
                "model_sha256": model_sha256}


def normalised(sums: Mapping[str, Tensor], count: int, normalize: str, *, kind: str, loss: str, draws: int,
               ctc_loss_reduction: str) -> Importance:
    """The importance from per-utterance sums over `count` utterances: their mean, divided by one global scale, the
    maximum ("max") or the mean ("mean") over all entries of all tensors ("none": 1), so the relative importance of
    layers survives. The sums are divided in place."""
    if normalize not in ("none", "max", "mean"):
        raise ValueError(f"normalize must be 'none', 'max' or 'mean', got {normalize!r}")
    if count < 1:
        raise ValueError(f"an importance needs at least 1 utterance, got {count}")
    finite = torch.stack([torch.isfinite(s).all() for s in sums.values()]).tolist()
    if not all(finite):
        bad = [n for n, ok in zip(sums, finite, strict=True) if not ok]
        raise ValueError(f"importance of {bad} is not finite (an infeasible CTC target with ctc_zero_infinity=False?)")
    # The statistic of the sums over N is that of the mean (1/N)·Σ: one global scale, the same for every tensor.
    scale = 1.0 if normalize == "none" else _global_statistic(sums.values(), normalize) / count
    tensors = {n: s.div_(scale * count) for n, s in sums.items()}
    return Importance(tensors, kind, loss, count, draws, normalize, scale, ctc_loss_reduction)


def _global_statistic(tensors: Iterable[Tensor], normalize: str) -> float:
    """The maximum ("max") or the mean ("mean", float64 sum) over all entries of all tensors; must be > 0."""
    tensors = list(tensors)
    if normalize == "max":
        scale = float(torch.stack([t.max() for t in tensors]).max())
    else:
        scale = float(torch.stack([t.double().sum() for t in tensors]).sum()) / sum(t.numel() for t in tensors)
    if not scale > 0:
        raise ValueError(f"cannot normalize the importance by its {normalize}: it is {scale} (all gradients zero?)")
    return scale


def save_importance(path: str | os.PathLike[str], tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Write the tensors and string metadata as safetensors, atomically.

    The metadata goes in as one sorted-JSON entry (`"importance"`): safetensors writes several entries in hash order,
    which changes the file's bytes from run to run and makes DVC re-run adapt for nothing.
    """
    bad = [key for key, value in metadata.items() if not isinstance(value, str)]
    if bad:
        raise TypeError(f"importance metadata values must be str; not for keys {bad}")
    with atomic_path(Path(path)) as tmp:
        save_file({n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, tmp,
                  metadata={"importance": json.dumps(dict(metadata), sort_keys=True)})


def load_importance(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by `save_importance`: (tensors by parameter name, metadata). A cut file, or a safetensors
    file without the importance's metadata, raises ImportanceError naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = json.loads((f.metadata() or {}).get("importance", "{}"))
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise ImportanceError(f"{path}: not a complete importance file ({err}); {RERUN}") from err
    missing = [key for key in ("kind", "normalize", "model_sha256") if key not in metadata]
    if missing:
        raise ImportanceError(f"{path}: no importance metadata {missing}: not written by the importance stage; {RERUN}")
    return tensors, metadata


def check_importance_matches(path: Path, metadata: Mapping[str, str], weights: Path, kinds: Iterable[str]) -> None:
    """Raise ImportanceError unless the importance at `path` (its `metadata`) was estimated at the weights file
    `weights` and is of one of `kinds` (EWC needs a Fisher, MAS its own importance)."""
    if metadata.get("model_sha256") != file_sha256(weights):
        raise ImportanceError(f"{path} was estimated for another model than {weights}: {RERUN}")
    kinds = list(kinds)
    if metadata["kind"] not in kinds:
        raise ImportanceError(f"{path} holds a {metadata['kind']} importance, this method needs {' or '.join(kinds)}: "
                              f"{RERUN}")


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


def importance_by_layer(tensors: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per layer, in model order: entries, sum, mean and max of the importance, and its share of the total sum."""
    layers: dict[str, dict[str, float]] = {}
    for name, tensor in tensors.items():
        stats = layers.setdefault(layer_of(name), {"entries": 0, "sum": 0.0, "max": 0.0})
        stats["entries"] += tensor.numel()
        stats["sum"] += float(tensor.double().sum())
        stats["max"] = max(stats["max"], float(tensor.max()))
    total = sum(s["sum"] for s in layers.values()) or 1.0
    for stats in layers.values():
        stats["mean"] = stats["sum"] / stats["entries"]
        stats["share"] = stats["sum"] / total
    return layers

