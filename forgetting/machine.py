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
from pathlib import Path
from typing import Any

from forgetting.schema import ResourcesParams

ATEN_KERNELS = "avx2"  # any x86-64 CPU since 2013 (Haswell, Zen) has AVX2
MKL_BRANCH = "COMPATIBLE"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def pinned_environment(resources: ResourcesParams) -> dict[str, str]:
    """The environment variables the reproducible mode sets before torch starts (the thread count alone where
    `cpu_threads` is set without the mode, or off x86-64, where the kernel pins mean nothing)."""
    env = {name: str(resources.cpu_threads) for name in THREAD_VARIABLES} if resources.cpu_threads else {}
    if resources.reproducible_cpu and is_x86():
        env |= {"ATEN_CPU_CAPABILITY": ATEN_KERNELS, "MKL_CBWR": MKL_BRANCH}
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
                "resources.reproducible_cpu: this %s CPU runs torch's %s kernels, not %s: only the thread count is "
                "pinned, and its results will not match other machines' bit for bit", platform.machine(), kernels,
                ATEN_KERNELS.upper())


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


def gpu_driver() -> str | None:
    """The NVIDIA driver's version from `nvidia-smi`, or None where it cannot be asked."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                          text=True, check=False)
    return done.stdout.splitlines()[0].strip() if done.returncode == 0 and done.stdout.strip() else None


def provenance(resources: ResourcesParams) -> dict[str, Any]:
    """What this run computed on, for `provenance.json` beside a stage's outputs; `machine` and `mode` name it in a
    report (two runs that differ in either may differ in their bytes)."""
    import torch  # not at the top: see the module's docstring
    import transformers

    model, flags = cpu_model()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    kernels = torch.backends.cpu.get_cpu_capability()
    pinned = resources.reproducible_cpu and is_x86() and is_pinned(resources) and kernels == ATEN_KERNELS.upper()
    mode = "reproducible" if pinned else "unpinned"
    return {
        "machine": model + (f" + {gpus[0]}" + (f" x{len(gpus)}" if len(gpus) > 1 else "") if gpus else ""),
        "mode": mode,
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
