"""Plumbing shared by the stage entry points: the parser, logging, the params check before any work, and one exit
line (not a traceback) for an input the library refuses."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from forgetting import machine
from forgetting.errors import InputError
from forgetting.io import write_json
from forgetting.params import load_params
from forgetting.schema import Params, ResourcesParams


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the stage module's docstring."""
    return argparse.ArgumentParser(description=doc)


def add_checkpoints(p: argparse.ArgumentParser) -> None:
    """The `--checkpoints` flag of the training stages: resumable checkpoints live there, outside DVC's outputs."""
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resumable checkpoints, not a DVC output")


def add_provenance(p: argparse.ArgumentParser) -> None:
    """The `--provenance` flag of the stages that compute with a model: where the machine they ran on is recorded."""
    p.add_argument("--provenance", type=Path, required=True,
                   help="provenance.json to write: the CPU, GPU, threads, pins and versions of this run (not a metric)")


def pin(resources: ResourcesParams) -> None:
    """Compute under `resources`' pins (`forgetting.machine`). The environment ones must be there before torch starts:
    `stages.launch` sets them; a stage started another way (by hand, or `python -m stages.average` from dvc.yaml)
    starts its own command again with them."""
    wanted = machine.pinned_environment(resources)
    if not machine.is_pinned(resources):
        print(f"{Path(sys.argv[0]).stem}: starting again with {' '.join(f'{k}={v}' for k, v in wanted.items())}",
              flush=True)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **wanted})
    machine.pin_in_process(resources)


def write_provenance(path: Path, resources: ResourcesParams) -> None:
    """`provenance.json` of this run (`forgetting.machine.provenance`), written by process 0 beside its outputs."""
    write_json(path, machine.provenance(resources))


def start(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, Params]:
    """Parse the arguments, set up logging, and load `params.yaml`; a bad params value stops here, with its key."""
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args, load_params()


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main`; an InputError (bad params, metadata, split file, model, Fisher) ends it with its message
    on one line and exit status 1, as `SystemExit` does."""
    try:
        main()
    except InputError as err:
        raise SystemExit(f"{Path(sys.argv[0]).stem}: {err}") from err


def named_paths(values: list[str], flag: str) -> dict[str, Path]:
    """`["name=path", ...]` as a mapping; a malformed or repeated name fails naming the flag."""
    pairs = dict(value.partition("=")[::2] for value in values)
    if len(pairs) != len(values) or not all(name and path for name, path in pairs.items()):
        raise SystemExit(f"{flag}: expected distinct NAME=PATH values, got {values}")
    return {name: Path(path) for name, path in pairs.items()}
