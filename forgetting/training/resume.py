"""Checkpoints that only the same run resumes: the run key, and finding the newest complete checkpoint.

A run is defined by the params sections its stage reads (`RUN_PARAMS`), the contents of its input files (data,
vocabulary, start weights, Fisher), the source of every project module loaded in the process (derived from
`sys.modules`, never from a hand list), and the torch and transformers versions. Its checkpoints live in
`<root>/<stage>-<key[:16]>/`, so a run with other params, data or code never picks up a stale checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open

from forgetting.io import file_sha256
from forgetting.layout import weights_file
from forgetting.schema import Params
from forgetting.training.live import CHECKPOINT_CURVES

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("forgetting", "stages")  # the project's code: this library and the entry points
# What defines a training run of each stage, besides its files: the params sections it reads (as in dvc.yaml).
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what peft saves in a checkpoint of a LoRA run
RUN_PARAMS = {"pretrain": ("seed", "resources", "data", "model", "pretrain"),
              "adapt": ("seed", "resources", "data", "adapt")}


def run_config(params: Params, stage: str) -> dict[str, object]:
    """The params sections that define a run of `stage` (`RUN_PARAMS`), as plain JSON-able values."""
    if stage not in RUN_PARAMS:
        raise KeyError(f"no training run is defined for stage {stage!r} (have {', '.join(RUN_PARAMS)})")
    values = {name: getattr(params, name) for name in RUN_PARAMS[stage]}
    return {name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for name, v in values.items()}


def code_files() -> list[Path]:
    """The source file of every module of `PACKAGES` loaded in this process (the stage run as `__main__`
    included), sorted: the code a run executes."""
    roots = [PROJECT_ROOT / package for package in PACKAGES]
    files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    return sorted(f for f in files if any(f.is_relative_to(root) for root in roots))


def run_key(config: Mapping[str, object], files: Sequence[Path]) -> str:
    """sha256 over everything that defines a run: `config` (JSON), the contents of `files` in order, and the
    torch and transformers versions."""
    digest = hashlib.sha256(json.dumps([config, torch.__version__, transformers.__version__], sort_keys=True).encode())
    for path in files:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def stage_run_key(params: Params, stage: str, inputs: Sequence[Path]) -> str:
    """The run key of `stage` with these params and input files, and the code loaded now."""
    return run_key(run_config(params, stage), [*inputs, *code_files()])


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step of a Trainer checkpoint folder `checkpoint-<step>`, or None for any other name."""
    step = checkpoint.name.removeprefix("checkpoint-")
    return int(step) if step.isdigit() and step != checkpoint.name else None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (a file missing or cut by a kill), or None when it is
    complete: trainer_state.json parses at its step, the weights file (or a LoRA run's adapter file) opens, the
    optimizer, scheduler and RNG states are whole zip archives (what `torch.save` writes), and the copy of the curves,
    written last, is there."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return f"no {state.name} (the save did not finish)"
    try:
        step = json.loads(state.read_text(encoding="utf-8"))["global_step"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        return f"{state.name} is not a complete trainer state ({err})"
    if step != checkpoint_step(checkpoint):
        return f"{state.name} holds step {step}, the folder's name says {checkpoint_step(checkpoint)}"
    adapter = checkpoint / ADAPTER_WEIGHTS  # a LoRA run's checkpoint holds its adapters, not the whole model
    weights = adapter if adapter.is_file() else weights_file(checkpoint)
    try:
        with safe_open(str(weights), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        return f"{weights.name}: {err}"
    # one process saves rng_state.pth; N processes (torchrun) save rng_state_<rank>.pth each
    rng_states = sorted(p.name for p in checkpoint.glob("rng_state_*.pth")) or ["rng_state.pth"]
    for name in ("optimizer.pt", "scheduler.pt", *rng_states):
        if not zipfile.is_zipfile(checkpoint / name):
            return f"{name} is missing or cut"
    if not (checkpoint / CHECKPOINT_CURVES).is_dir():
        return f"no {CHECKPOINT_CURVES}/ (the copy of the curves is written after the checkpoint)"
    return None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` in `run_dir`, or None. An incomplete newer one (a kill during its
    save) is passed over with a warning that names it; the run then resumes from the one before it."""
    candidates = sorted((p for p in run_dir.glob("checkpoint-*") if checkpoint_step(p) is not None),
                        key=checkpoint_step, reverse=True)
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        log.warning("%s is incomplete, not resumed from: %s (training saves that step again when it gets there; "
                    "remove %s to start afresh)", checkpoint, problem, run_dir)
    return None
