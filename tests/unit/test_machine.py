"""The reproducible CPU mode's pins and a run's provenance, in real processes (torch reads its kernel choices from the
environment once, so each case starts a Python of its own)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from forgetting.machine import is_x86, pinned_environment
from forgetting.schema import ResourcesParams

ROOT = Path(__file__).resolve().parents[2]
# a stage's first steps: its params, the pins, and what it then records
STAGE = """
from forgetting.machine import provenance
from forgetting.params import load_params
from stages import cli
resources = load_params().resources
cli.pin(resources)
print("PROVENANCE", __import__("json").dumps(provenance(resources)))
"""
PINS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
needs_avx2 = pytest.mark.skipif(not is_x86() or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                                reason="the kernel pins need an x86-64 CPU with AVX2")


def test_the_mode_pins_the_kernels_the_blas_and_the_threads():
    threads = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    pinned = ResourcesParams(1, True, 3)
    assert pinned_environment(pinned, ["sse2", "avx2", "fma"]) == (
        threads | {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"} if is_x86() else threads)
    # a CPU without AVX2 would die in ATen's AVX2 kernels (ATen trusts the variable): MKL and the threads only
    assert pinned_environment(pinned, ["sse2", "avx"]) == (threads | {"MKL_CBWR": "COMPATIBLE"} if is_x86() else threads)
    assert pinned_environment(ResourcesParams(1, False, 3)) == threads
    assert pinned_environment(ResourcesParams(1, False, None)) == {}


def start(tmp_path: Path, resources: dict, env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    """`command` run from `tmp_path` with the project's params and `resources`, under `env` over a pin-free
    environment. STAGE is there as `stages.probe`, a stage module as `python -m` starts it (the folder's `stages`
    package reaches the project's too), and as the plain script `probe.py`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["resources"] |= resources
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (tmp_path / "stages").mkdir(exist_ok=True)
    (tmp_path / "stages" / "__init__.py").write_text(f"__path__.append({str(ROOT / 'stages')!r})\n", encoding="utf-8")
    (tmp_path / "stages" / "probe.py").write_text(STAGE, encoding="utf-8")
    (tmp_path / "probe.py").write_text(STAGE, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in PINS} | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, *command], cwd=tmp_path, env=clean | env, capture_output=True, text=True)


def run_stage(tmp_path: Path, resources: dict, env: dict[str, str]) -> tuple[str, dict]:
    """`python -m stages.probe` (see `start`): its output and the provenance it printed."""
    done = start(tmp_path, resources, env, "-m", "stages.probe")
    assert done.returncode == 0, done.stderr
    record = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("PROVENANCE"))[11:])
    return done.stdout, record


@needs_avx2
def test_a_stage_started_without_the_pins_starts_again_with_them(tmp_path):
    output, record = run_stage(tmp_path, {"reproducible_cpu": True, "cpu_threads": 1},
                               {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "2"})
    assert "probe: starting again with OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2" \
        in output
    assert (record["mode"], record["cpu"]["kernels"], record["threads"]) == ("reproducible", "AVX2", 1)
    assert record["pins"] == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1",
                              "MKL_NUM_THREADS": "1", "onednn": False}


@needs_avx2
def test_a_stage_the_launcher_pinned_runs_once(tmp_path):
    env = pinned_environment(ResourcesParams(1, True, 2))
    output, record = run_stage(tmp_path, {"reproducible_cpu": True, "cpu_threads": 2}, env)
    assert "starting again" not in output
    assert (record["mode"], record["threads"], record["pins"]["onednn"]) == ("reproducible", 2, False)


def test_unpinned_leaves_torch_its_choices_and_says_so(tmp_path):
    output, record = run_stage(tmp_path, {"reproducible_cpu": False, "cpu_threads": None}, {})
    assert "starting again" not in output
    assert record["mode"] == "unpinned" and record["pins"]["onednn"] is True
    assert record["pins"]["ATEN_CPU_CAPABILITY"] is None and record["cpu"]["kernels"] == \
        torch.backends.cpu.get_cpu_capability()
    assert record["versions"]["torch"] == torch.__version__ and record["gpus"] == [] and record["processes"] == 1
    if Path("/proc/cpuinfo").is_file():
        assert record["cpu"]["model"] and record["cpu"]["flags"]


def test_a_process_that_cannot_start_again_is_refused_naming_the_way(tmp_path):
    done = start(tmp_path, {"reproducible_cpu": True, "cpu_threads": 2}, {}, "probe.py")
    assert done.returncode == 1 and "starting again" not in done.stdout
    assert "resources.reproducible_cpu: this process started without the mode's environment" in done.stderr
    assert "run the stage through `python -m stages.launch`" in done.stderr
