"""Plumbing shared by the stage entry points: the parser, logging, and the params check before any work."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from forgetting.params import Params, ParamsError, load_params


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the stage module's docstring."""
    return argparse.ArgumentParser(description=doc)


def add_checkpoints(p: argparse.ArgumentParser) -> None:
    """The `--checkpoints` flag of the training stages: resumable checkpoints live there, outside DVC's outputs."""
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resumable checkpoints, not a DVC output")


def start(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, Params]:
    """Parse the arguments, set up logging, and load `params.yaml`; a bad params value stops here, with its key."""
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args, load_params()
    except ParamsError as err:
        raise SystemExit(f"{p.prog}: {err}") from err


def named_paths(values: list[str], flag: str) -> dict[str, Path]:
    """`["name=path", ...]` as a mapping; a malformed or repeated name fails naming the flag."""
    pairs = dict(value.partition("=")[::2] for value in values)
    if len(pairs) != len(values) or not all(name and path for name, path in pairs.items()):
        raise SystemExit(f"{flag}: expected distinct NAME=PATH values, got {values}")
    return {name: Path(path) for name, path in pairs.items()}
