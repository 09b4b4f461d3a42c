"""Writing files so that an interrupted write never leaves a file that looks complete, and reading their hashes.

Every writer of a stage output goes through here: a file is written beside its target and renamed onto it
(`os.replace` is atomic on one file system), a folder is filled as `<name>.tmp` and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an error,
    removed when it raises. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")  # the suffix keeps writers' format guess
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: object) -> None:
    """Pretty, stable JSON (sorted keys) so git diffs of metrics stay readable; written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def temp_dir(path: Path) -> Path:
    """The folder `<path>.tmp` that `replace_dir` renames onto `path`, created empty."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the complete folder `tmp` in the place of `path` (whatever was there is removed first)."""
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
