"""The stage launcher: a params value that no process may run with is refused once, in one line, before torchrun
starts any process."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_an_effective_batch_that_does_not_divide_is_refused_before_torchrun(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["resources"]["nproc_per_node"] = 2  # the demo's batch 8 = effective batch 8 cannot go over 2 processes
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "stages.launch", "2", "stages.pretrain", "--model", "m"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == ["pretrain: params.yaml: pretrain.effective_batch_size: 8 is not a multiple of "
                                        "batch_size 8 x 2 process(es)"]
