"""A micro copy of the project in a temporary git repo, and running commands in it as a user would."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

MICRO = {
    "demo.clips_per_lang": 48,
    "demo.speakers": 12,
    "demo.readers_per_sentence": 1.0,  # a few utterances per split: whole speakers, no sentence to cut around,
    "sample.split_tolerance": 0.5,     # land within 50 %
    "sample.max_speaker_share": 1.0,
    "sample.nl.n": 44,
    "validate.max_reject_fraction": 0.3,  # the demo plants 3 bad clips (corrupt, missing, too long) per language
    "pretrain.max_steps": 4, "pretrain.eval_steps": 2, "pretrain.batch_size": 4, "pretrain.effective_batch_size": 4,
    "pretrain.dataloader_workers": 0,
    "importance.samples": 6, "importance.batch_size": 3,
    "adapt.max_steps": 3, "adapt.eval_steps": 1, "adapt.batch_size": 2, "adapt.effective_batch_size": 4,
    "adapt.keep": "last",  # the micro dev WERs all tie at 1: the best would be step 1, where λ has not acted yet
    "adapt.dataloader_workers": 0,
    "eval.bootstrap_samples": 50,
    "eval.min_speakers": 2,  # the micro test splits hold 2 to 4 speakers
}
ALL_STAGES = {"demo", "sample@nl", "sample@de", "validate@nl", "validate@de", "vocab", "pretrain", "importance", "adapt",
              "average", "eval"}


def set_key(raw: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        raw = raw[key]
    raw[leaf] = value


def make_repo(repo: Path, overrides: dict | None = None) -> Path:
    """The project's tracked and unignored files in a fresh git repo at `repo`, with the micro params (and
    `overrides`, dotted keys) committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    for key, value in {**MICRO, **(overrides or {})}.items():
        set_key(raw, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    run(repo, "git", "init", "-q")
    commit(repo, "micro")
    return repo


def run(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command as a user would (the venv's `python` and `dvc` first on PATH, `env` over the environment); its
    stdout, or a failure."""
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args, env=env)


def commit(repo: Path, message: str) -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))
