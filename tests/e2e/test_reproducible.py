"""Two CPUs on one machine: the micro pipeline under the kernel choices of two processors, emulated as another CPU
would make them (ATen's capability, oneDNN's instruction set, MKL's branch, the thread count). Unpinned, their
pretrained weights differ; in the reproducible mode (`resources.reproducible_cpu`, the default) every output is the
same byte for byte, so the lock that one machine committed is up to date on the other. The tests run in this order
on the one pair of clones: compare, check out, then unpin."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests.e2e.micro import commit, dvc, make_repo, run, set_key, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# This host's own choice (AVX-512 where it has it) against an AVX2 processor with one core.
HOST = {"ATEN_CPU_CAPABILITY": "avx512" if torch.backends.cpu.get_cpu_capability() == "AVX512" else "default",
        "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
AVX2_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRETRAINED = "models/pretrained/model.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unpin(repo: Path) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    set_key(raw, "resources.reproducible_cpu", False)
    set_key(raw, "resources.cpu_threads", None)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="module")
def machines(tmp_path_factory) -> tuple[Path, Path]:
    """The micro project cloned twice, each run through `dvc repro` on its own emulated CPU and committed."""
    root = tmp_path_factory.mktemp("machines")
    first = make_repo(root / "host")
    subprocess.run(["git", "clone", "-q", str(first), str(root / "avx2")], check=True)
    second = root / "avx2"
    for repo, env in ((first, HOST), (second, AVX2_CPU)):
        dvc(repo, "repro", env=env)
        commit(repo, "run")
    return first, second


def test_the_reproducible_mode_gives_both_cpus_the_same_bytes(machines):
    first, second = machines
    assert sha256(first / PRETRAINED) == sha256(second / PRETRAINED)
    assert (first / "reports/metrics.json").read_bytes() == (second / "reports/metrics.json").read_bytes()
    for repo in machines:
        record = json.loads((repo / "reports/pretrain/provenance.json").read_text(encoding="utf-8"))
        assert (record["mode"], record["cpu"]["kernels"], record["threads"], record["pins"]["onednn"]) == \
            ("reproducible", "AVX2", 2, False)


def test_the_other_machines_lock_is_up_to_date_after_checkout(machines):
    first, second = machines
    # the two locks differ (each run's timings), so the checkout brings the other machine's lock
    assert (first / "dvc.lock").read_text(encoding="utf-8") != (second / "dvc.lock").read_text(encoding="utf-8")
    run(second, "git", "fetch", "-q", str(first))
    run(second, "git", "checkout", "-q", "FETCH_HEAD")
    assert "up to date" in dvc(second, "status")
    assert stages_run(dvc(second, "repro", env=AVX2_CPU)) == set()


def test_unpinned_the_two_cpus_train_different_weights(machines):
    for repo, env in zip(machines, (HOST, AVX2_CPU), strict=True):
        unpin(repo)
        assert stages_run(dvc(repo, "repro", "pretrain", env=env)) == {"pretrain"}
        record = json.loads((repo / "reports/pretrain/provenance.json").read_text(encoding="utf-8"))
        assert record["mode"] == "unpinned" and record["pins"]["onednn"] is True
    assert sha256(machines[0] / PRETRAINED) != sha256(machines[1] / PRETRAINED)
