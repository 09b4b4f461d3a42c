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

RESTARTED = "FORGETTING_RESTARTED"  # set by `pin` when it starts a stage again: never twice


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
    `stages.launch` sets them; a stage started as `python -m stages.<name>` (by hand) starts its own command again with
    them, once. Called from anything else (a notebook, a test's process), it refuses: that process cannot restart."""
    if not machine.is_pinned(resources):
        wanted = machine.pinned_environment(resources)
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None or not spec.name.startswith("stages.") or os.environ.get(RESTARTED):
            raise InputError(f"resources.reproducible_cpu: this process started without the mode's environment "
                             f"({' '.join(f'{k}={v}' for k, v in wanted.items())}), which torch reads once when it "
                             "starts: run the stage through `python -m stages.launch`, or set resources.cpu_threads: "
                             "null and reproducible_cpu: false")
        print(f"{spec.name.removeprefix('stages.')}: starting again with "
              f"{' '.join(f'{k}={v}' for k, v in wanted.items())}", flush=True)
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **wanted, RESTARTED: "1"})
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
