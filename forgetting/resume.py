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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import transformers

from forgetting.io import file_sha256
from forgetting.params import Params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("forgetting", "stages")  # the project's code: this library and the entry points
# What defines a training run of each stage, besides its files: the params sections it reads (as in dvc.yaml).
RUN_PARAMS = {"pretrain": ("seed", "data", "model", "pretrain"), "adapt": ("seed", "data", "adapt")}


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


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` in `run_dir` (trainer_state.json is written last), or None."""
    done = [p for p in run_dir.glob("checkpoint-*") if checkpoint_step(p) is not None and (p / "trainer_state.json").is_file()]
    return max(done, key=checkpoint_step, default=None)
