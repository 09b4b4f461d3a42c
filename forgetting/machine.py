"""The machine a run computes on: the reproducible CPU mode that pins what decides the CPU's arithmetic, and a run's
provenance (the CPU and its flags, the GPU, the threads, the pins, the versions).

Which pins matter was found by experiment (the same ten training steps of the demo model, weights hashed; README,
"Reproducible on any machine"): ATen's kernels (AVX-512 and AVX2 round differently), oneDNN (its convolutions at each
instruction set; its blocking also follows the cache sizes, which no flag pins, so the mode turns it off and ATen's own
convolution runs on MKL's GEMM), MKL's branch (only `COMPATIBLE` is documented to give the same bytes on Intel and
AMD; the `AVX2` branch is Intel's alone) and the thread count (the order of parallel sums).
`torch.use_deterministic_algorithms` changed no byte on the CPU, so the mode leaves it out.

This module does not import torch at its top: the launcher imports it to set the environment before torch starts,
which reads its kernel choices from there once.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

from forgetting.schema import ResourcesParams

ATEN_KERNELS = "avx2"  # any x86-64 CPU since 2013 (Haswell, Zen) has AVX2
AVX2_FLAGS = {"avx2", "fma"}  # what ATen's AVX2 kernels need: ATen trusts its variable, and without them dies (SIGILL)
MKL_BRANCH = "COMPATIBLE"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def pinned_environment(resources: ResourcesParams, flags: Collection[str] | None = None) -> dict[str, str]:
    """The environment variables the reproducible mode sets before torch starts: the thread count (also where
    `cpu_threads` is set without the mode), MKL's branch on x86-64, and ATen's kernels where the CPU has them
    (`flags`: the CPU's feature flags; default this one's, from `cpu_model`)."""
    env = {name: str(resources.cpu_threads) for name in THREAD_VARIABLES} if resources.cpu_threads else {}
    if resources.reproducible_cpu and is_x86():
        env["MKL_CBWR"] = MKL_BRANCH
        if AVX2_FLAGS.issubset(cpu_model()[1] if flags is None else flags):
            env["ATEN_CPU_CAPABILITY"] = ATEN_KERNELS
    return env


def is_pinned(resources: ResourcesParams) -> bool:
    """Whether this process's environment already holds the pins (set before torch started)."""
    return all(os.environ.get(name) == value for name, value in pinned_environment(resources).items())


def pin_in_process(resources: ResourcesParams) -> None:
    """What can only be set inside the process, after torch starts: oneDNN off in the reproducible mode. A CPU that
    cannot run the pinned kernels (no AVX2, or not x86-64) is named in a warning: its bytes are its own."""
    import torch  # not at the top: see the module's docstring

    if resources.reproducible_cpu:
        torch.backends.mkldnn.enabled = False
        kernels = torch.backends.cpu.get_cpu_capability()
        if kernels != ATEN_KERNELS.upper():
            logging.getLogger(__name__).warning(
                "resources.reproducible_cpu: this %s CPU runs torch's %s kernels, not %s: its results will not match "
                "other machines' bit for bit (the threads and oneDNN are pinned all the same)", platform.machine(),
                kernels, ATEN_KERNELS.upper())


def cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and its feature flags (`/proc/cpuinfo` on Linux; the platform's words elsewhere)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        fields = dict(line.split(":", 1) for line in info.read_text(encoding="utf-8", errors="replace").splitlines()
                      if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model = fields.get("model name") or fields.get("Model") or fields.get("CPU part") or platform.processor()
        return model, sorted((fields.get("flags") or fields.get("Features") or "").split())
    return platform.processor() or platform.machine(), []


def instruction_set(flags: Collection[str]) -> str:
    """The widest vector instructions among a CPU's flags, which decide the kernels an unpinned run gets."""
    for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("asimd", "NEON")):
        if flag in flags:
            return name
    return platform.machine()


def gpu_driver() -> str | None:
    """The NVIDIA driver's version from `nvidia-smi`, or None where it cannot be asked."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=False, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


def provenance(resources: ResourcesParams) -> dict[str, Any]:
    """What this run computed on, for `provenance.json` beside a stage's outputs; `machine` (the CPU's model, its
    widest instructions, the GPUs) and `mode` (`reproducible`, `unpinned`, or `gpu`) name it in a report: two runs
    that differ in either may differ in their bytes."""
    import torch  # not at the top: see the module's docstring
    import transformers

    model, flags = cpu_model()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    kernels = torch.backends.cpu.get_cpu_capability()
    pinned = (resources.reproducible_cpu and is_pinned(resources) and kernels == ATEN_KERNELS.upper()
              and not torch.backends.mkldnn.enabled)
    machine = f"{model} ({instruction_set(flags)})"
    if gpus:  # the stages compute on the GPUs they see
        machine += f" + {len(gpus)} x {gpus[0]}"
    return {
        "machine": machine,
        "mode": "gpu" if gpus else "reproducible" if pinned else "unpinned",
        "cpu": {"model": model, "architecture": platform.machine(), "cores": os.cpu_count(), "kernels": kernels,
                "flags": flags},
        "gpus": gpus,
        "gpu_driver": gpu_driver() if gpus else None,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "threads": torch.get_num_threads(),
        "pins": {**{name: os.environ.get(name) for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", *THREAD_VARIABLES)},
                 "onednn": torch.backends.mkldnn.enabled},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None},
    }
