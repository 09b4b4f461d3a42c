"""The training core on real eSpeak clips: loss falling, the regulariser hook, and resume / repeat determinism of
short CPU runs."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetting.model import build_model, build_processor
from forgetting.params import load_params
from forgetting.penalty import EWCPenalty
from forgetting.resume import last_checkpoint
from forgetting.trainer import train_ctc

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(ROOT / "params.yaml")
# A micro run: 6 optimiser steps, evaluated and saved every 3, dropout and time masking on so that a resume
# must restore the RNG state to match.
MICRO = dataclasses.replace(PARAMS.pretrain, lr=3e-3, warmup_ratio=0.2, max_steps=6, batch_size=2, effective_batch_size=2,
                            eval_steps=3, dropout=0.05, mask_time_prob=0.05, dataloader_workers=0, save_total_limit=2)


def run(corpus, root: Path, params=MICRO, train=slice(0, 8), dev=slice(8, 12), regulariser=None, key="k" * 64, ewc=None):
    """One `train_ctc` run of a freshly built tiny model (seed 0) with everything written under `root`; `ewc`
    (a function of the model) builds the regulariser from the model when given."""
    processor = build_processor(corpus.vocab)
    model = build_model(PARAMS.model, len(processor.tokenizer), seed=0)
    if ewc is not None:
        regulariser = ewc(model)
    result = train_ctc(model, processor, corpus.utterances[train], corpus.utterances[dev], corpus.clips_dir, params, "micro",
                       seed=0, out_dir=root / "model", reports_dir=root / "reports", checkpoints_root=root / "checkpoints",
                       run_key=key, regulariser=regulariser)
    return result, load_file(root / "model" / "model.safetensors")


def curve(reports: Path, name: str) -> dict[int, float]:
    """A dvclive metric history (step -> value)."""
    with open(reports / "plots" / "metrics" / f"{name}.tsv", encoding="utf-8") as f:
        return {int(row["step"]): float(row[name.split("/")[-1]]) for row in csv.DictReader(f, delimiter="\t")}


def test_overfitting_four_clips_lowers_the_loss(corpus, tmp_path):
    params = dataclasses.replace(MICRO, max_steps=30, eval_steps=30, batch_size=4, effective_batch_size=4, dropout=0.0,
                                 mask_time_prob=0.0)
    result, _ = run(corpus, tmp_path, params, train=slice(0, 4), dev=slice(0, 4))
    losses = curve(tmp_path / "reports", "train/ctc_loss")
    assert losses[1] > 3 * losses[30]  # random init (~11) down to the CTC blank plateau (~2.8); past it takes ~250 steps
    assert not (tmp_path / "reports" / "plots" / "metrics" / "train" / "penalty.tsv").exists()  # no regulariser
    assert result.steps == result.best_step == 30 and result.resumed_from_step is None
    summary = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert summary["best"] == {"dev_wer": result.best_dev_wer, "dev_cer": result.best_dev_cer, "step": 30}
    assert 0 <= result.best_dev_cer <= 1.5
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.safetensors", "config.json", "vocab.json"}
    assert not (tmp_path / "checkpoints" / f"micro-{'k' * 16}").exists()  # removed once the model is written
    assert {p.name for p in (tmp_path / "reports").iterdir()} == {"metrics.json", "plots"}  # no dvc.yaml, no params.yaml
    curves = {str(p.relative_to(tmp_path / "reports" / "plots" / "metrics")) for p in (tmp_path / "reports").rglob("*.tsv")}
    assert curves == {"train/loss.tsv", "train/ctc_loss.tsv", "train/grad_norm.tsv",
                      "train/learning_rate.tsv", "eval/loss.tsv", "eval/wer.tsv", "eval/cer.tsv"}
    assert summary["train"]["runtime"] > 0 and summary["eval"]["wer"] == result.best_dev_wer


def test_regulariser_is_added_once_per_step_and_logged_apart(corpus, tmp_path):
    params = dataclasses.replace(MICRO, max_steps=4, eval_steps=4, batch_size=2, effective_batch_size=4)  # 2 micro-batches
    calls = []

    def regulariser(model: torch.nn.Module) -> torch.Tensor:
        calls.append(model.training)
        return 1e-3 * sum(p.pow(2).sum() for p in model.parameters())

    run(corpus, tmp_path, params, regulariser=regulariser)
    assert calls == [True] * 8  # every training micro-batch, never in evaluation
    loss, ctc, penalty = (curve(tmp_path / "reports", f"train/{name}") for name in ("loss", "ctc_loss", "penalty"))
    assert sorted(loss) == [1, 4]
    for step in loss:
        assert penalty[step] > 0.01
        assert loss[step] == pytest.approx(ctc[step] + penalty[step], rel=1e-3)  # not x2: the Trainer divided by accumulation


class Interrupted(Exception):
    """Raised from inside training, like a kill after a checkpoint was written."""


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    return run(corpus, tmp_path_factory.mktemp("full"))


def test_same_params_give_the_same_run(corpus, full_run, tmp_path):
    (result, weights) = full_run
    again, weights_again = run(corpus, tmp_path, dataclasses.replace(MICRO, dataloader_workers=1))
    assert dataclasses.astuple(again)[:5] == dataclasses.astuple(result)[:5]
    assert all(torch.equal(weights[name], weights_again[name]) for name in weights)


def test_interrupted_run_resumes_to_the_same_weights(corpus, full_run, tmp_path):
    calls = 0

    def interrupt_in_step_4(model: torch.nn.Module) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise Interrupted
        return torch.zeros(())

    with pytest.raises(Interrupted):
        run(corpus, tmp_path, regulariser=interrupt_in_step_4)
    assert not (tmp_path / "model").exists()
    assert last_checkpoint(tmp_path / "checkpoints" / f"micro-{'k' * 16}").name == "checkpoint-3"
    result, weights = run(corpus, tmp_path)
    assert result.resumed_from_step == 3 and result.steps == 6
    expected, expected_weights = full_run
    assert (result.best_dev_wer, result.best_dev_cer, result.best_step) == (
        expected.best_dev_wer, expected.best_dev_cer, expected.best_step)
    assert all(torch.equal(weights[name], expected_weights[name]) for name in weights)
    assert sorted(curve(tmp_path / "reports", "eval/wer")) == [3, 6]  # the curve continues across the resume


def test_zero_lambda_ewc_is_plain_fine_tuning(corpus, full_run, tmp_path):
    def zero_lambda(model: torch.nn.Module) -> EWCPenalty:
        fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
        return EWCPenalty(model, fisher, lam=0.0)

    _, weights = run(corpus, tmp_path, ewc=zero_lambda)
    _, expected = full_run
    assert all(torch.equal(weights[name], expected[name]) for name in weights)


def test_huge_lambda_keeps_the_weights_near_the_anchor(corpus, full_run, tmp_path):
    processor = build_processor(corpus.vocab)
    anchor = build_model(PARAMS.model, len(processor.tokenizer), seed=0).state_dict()
    _, held = run(corpus, tmp_path, ewc=lambda model: EWCPenalty(model, None, lam=1e4))
    _, free = full_run

    def distance(weights: dict[str, torch.Tensor]) -> float:
        return sum(float((weights[n] - anchor[n]).pow(2).sum()) for n in weights) ** 0.5

    assert distance(held) < 0.5 * distance(free)  # Adam steps ~lr whatever the gradient: the anchor pulls back


def test_another_run_key_starts_afresh(corpus, full_run, tmp_path):
    stale = tmp_path / "checkpoints" / f"micro-{'k' * 16}" / "checkpoint-3"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")  # would fail to load if it were picked up
    result, _ = run(corpus, tmp_path, key="n" * 64)
    assert result.resumed_from_step is None and stale.exists()
