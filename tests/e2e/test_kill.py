"""Killed at any moment: SIGKILL a stage (with the `dvc repro` that runs it) at seeded random moments during pretrain,
importance, adapt and eval; the next `dvc repro` resumes where a checkpoint exists and ends with the same bytes as an
uninterrupted run."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.micro import dvc, make_repo, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the slowest takes about 130 s here
# longer training than the pipeline test's, so that a kill can land between checkpoints
LONGER = {"pretrain.max_steps": 12, "pretrain.eval_steps": 4, "adapt.max_steps": 9, "adapt.eval_steps": 3}
RESULTS = ("models/pretrained/model.safetensors", "models/importance/importance.safetensors", "models/adapted/model.safetensors",
           "reports/average/metrics.json", "reports/metrics.json", "reports/eval/adapted_nl.tsv",
           "reports/figures/error_rates.png")
CURVES = ("reports/pretrain/plots/metrics", "reports/adapt/plots/metrics")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(repo: Path) -> dict[str, object]:
    """What an uninterrupted run must match: result files' sha256, every curve file, the training metrics (results
    only: the timings are in a file of their own)."""
    prints: dict[str, object] = {name: sha256(repo / name) for name in RESULTS}
    for folder in CURVES:
        prints |= {str(p.relative_to(repo)): p.read_text() for p in sorted((repo / folder).rglob("*.tsv"))}
    for stage in ("pretrain", "adapt"):
        prints[stage] = json.loads((repo / f"reports/{stage}/metrics.json").read_text())
    return prints


def stage_running(session: int, stage: str) -> bool:
    """Whether the stage's process runs in the session of the `dvc repro` that started it."""
    return subprocess.run(["pgrep", "-s", str(session), "-f", rf"stages\.{stage} "], capture_output=True).returncode == 0


def kill_during(repo: Path, stage: str, delay_s: float, after_checkpoint: bool) -> None:
    """Start `dvc repro -f -s <stage>` and SIGKILL its whole process group (dvc and the stage) `delay_s` seconds after
    the stage's process appears, or once the stage has written its first checkpoint."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    job = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=repo, env=env,
                           start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not stage_running(job.pid, stage):
        assert job.poll() is None and time.monotonic() < deadline, f"{stage} never started"
        time.sleep(0.05)
    if after_checkpoint:
        while not list((repo / "checkpoints").glob(f"{stage}-*/checkpoint-*/trainer_state.json")):
            assert job.poll() is None and time.monotonic() < deadline, f"{stage} wrote no checkpoint"
            time.sleep(0.05)
    time.sleep(delay_s)
    assert job.poll() is None, f"{stage} finished before the kill at {delay_s:.2f} s"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    while stage_running(job.pid, stage):
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, object]]:
    """A micro repo after one uninterrupted `dvc repro`, and its fingerprint; each kill below starts from it."""
    repo = make_repo(tmp_path_factory.mktemp("kill") / "repo", LONGER)
    dvc(repo, "repro")
    return repo, fingerprint(repo)


@pytest.mark.parametrize(("stage", "after_checkpoint"), [
    ("pretrain", False), ("pretrain", True), ("importance", False), ("adapt", False), ("adapt", True), ("eval", False)])
def test_a_killed_stage_reruns_to_the_uninterrupted_result(reference, stage, after_checkpoint):
    repo, expected = reference
    delay_s = random.Random(f"{stage}-{after_checkpoint}").uniform(0.0, 0.3 if after_checkpoint else 2.0)
    kill_during(repo, stage, delay_s, after_checkpoint)
    assert stage in dvc(repo, "status")  # killed: its outputs are gone or stale, and DVC knows it
    rerun = dvc(repo, "repro")
    assert stage in stages_run(rerun)
    if after_checkpoint:
        assert "resuming from" in rerun or "resumed at step" in rerun
    assert fingerprint(repo) == expected
    assert "Data and pipelines are up to date" in dvc(repo, "status")
