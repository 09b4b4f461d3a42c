"""What only a GPU shows, ready for when one is at hand: `python -m pytest -m gpu` (about 2 minutes on one H100;
skipped without CUDA). Mixed-precision steps with EWC, a forced skip under fp16's real loss scaler, DDP over the
visible GPUs (NCCL) when there are two or more, and a kill-and-resume of the training core that adapt runs. The same
runs as the CPU tests (`tests/unit/training/`), on the GPU's own arithmetic."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forgetting.methods.penalty import EWCPenalty
from forgetting.training.model import build_model, build_processor
from tests.unit.training.test_ctc_trainer import Final
from tests.unit.training.test_trainer import MICRO, PARAMS, Interrupted, StepWatch, interrupt_at, poison, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


def precision(name: str):
    return dataclasses.replace(MICRO, fp16=name == "fp16", bf16=name == "bf16", max_skipped_fraction=0.2,
                               warmup_ratio=0.0)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_a_mixed_precision_run_with_ewc_is_finite_and_held_near_the_anchor(corpus, tmp_path, name):
    held, held_weights = run(corpus, tmp_path / "held", precision(name), ewc=lambda m: EWCPenalty(m, None, lam=1e4))
    free, free_weights = run(corpus, tmp_path / "free", precision(name))
    assert held.steps == free.steps == MICRO.max_steps
    assert all(torch.isfinite(w).all() for w in (*held_weights.values(), *free_weights.values()))
    processor = build_processor(corpus.vocab)
    anchor = build_model(PARAMS.model, processor.tokenizer.get_vocab(), seed=0).state_dict()  # where both runs start

    def distance(weights: dict[str, torch.Tensor]) -> float:
        return sum(float((weights[n].cpu() - anchor[n]).pow(2).sum()) for n in weights) ** 0.5

    assert distance(held_weights) < 0.5 * distance(free_weights)


def test_a_forced_skip_under_fp16_goes_through_the_real_loss_scaler(corpus, tmp_path):
    watch, final = StepWatch(), Final()
    result, weights = run(corpus, tmp_path, precision("fp16"), regulariser=poison({2}, "loss"), callbacks=[watch, final])
    assert result.skipped_steps == (2,) and watch.moved[2] is False
    assert final.scheduler_steps < MICRO.max_steps and final.scale is not None  # the scaler ran and the schedule skipped
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_killed_fp16_run_resumes_to_the_uninterrupted_weights(corpus, tmp_path):
    params = precision("fp16")
    _, whole = run(corpus, tmp_path / "whole", params, regulariser=interrupt_at(0))  # the same zero term, never raising
    with pytest.raises(Interrupted):
        run(corpus, tmp_path / "killed", params, regulariser=interrupt_at(4))  # killed in step 4, after checkpoint 3
    result, resumed = run(corpus, tmp_path / "killed", params, regulariser=interrupt_at(0))
    assert result.resumed_from_step == 3
    for name, weight in whole.items():
        torch.testing.assert_close(resumed[name], weight, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_over_the_visible_gpus_equals_one_process():
    """The CPU's two-process DDP tests (gloo), run on NCCL with one GPU per process."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/unit/training/test_distributed.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)  # NCCL: the library's choice on GPUs
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
