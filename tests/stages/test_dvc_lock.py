"""The committed `dvc.lock` is the one the committed code and params make: every file a stage depends on that git
holds (its code) has the checksum the lock records, and every param the lock records has its value in `params.yaml`.
A lock left behind by a change makes a fresh clone's `dvc repro` re-train from the start."""

import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
TRACKED = set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())


def lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("stage", sorted(LOCK))
def test_the_lock_records_the_committed_code_and_params(stage):
    entry = LOCK[stage]
    for dep in entry.get("deps", []):
        if dep["path"] in TRACKED:
            md5 = hashlib.md5((ROOT / dep["path"]).read_bytes()).hexdigest()
            assert md5 == dep["md5"], f"{stage}: {dep['path']} changed since dvc.lock was written: run `dvc repro`"
    for dotted, value in entry.get("params", {}).get("params.yaml", {}).items():
        assert lookup(PARAMS, dotted) == value, f"{stage}: params.yaml {dotted} differs from dvc.lock: run `dvc repro`"
