"""Mixed precision end to end on the CPU: the micro pipeline with `bf16: true` for pretrain and adapt (CPU autocast
through the Trainer), EWC at a huge λ. Finite losses, a penalty that holds the weights near θ*, dev scores in float32
(kept.dev equals what `average` scores at α = 1), and a SIGKILLed adapt that reruns to the same bytes."""

import csv
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.micro import commit, dvc, make_repo, run, stages_run
from tests.e2e.test_kill import kill_during, sha256
from tests.e2e.test_pipeline import read_json

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
BF16 = {"pretrain.bf16": True, "adapt.bf16": True, "adapt.ewc_lambda": 1e4, "average.alpha": 1.0,
        "adapt.max_steps": 6, "adapt.eval_steps": 3}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("bf16") / "repo", BF16)
    dvc(repo, "repro")
    commit(repo, "the bf16 run")
    return repo


def curve(repo: Path, stage: str, name: str) -> list[float]:
    with open(repo / f"reports/{stage}/plots/metrics/{name}.tsv", encoding="utf-8") as f:
        return [float(row[name.rsplit("/", 1)[-1]]) for row in csv.DictReader(f, delimiter="\t")]


def weighted_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor]) -> float:
    """sqrt(Σ F·(a − b)²) over the parameters that have an importance: what the EWC penalty measures."""
    return math.sqrt(sum(float((fisher[n] * (a[n] - b[n]).pow(2)).sum()) for n in fisher))


def test_bf16_training_has_finite_losses_and_float32_dev_scores(repo):
    for stage in ("pretrain", "adapt"):
        losses = curve(repo, stage, "train/loss")
        assert losses and all(math.isfinite(v) for v in losses), stage
        assert read_json(repo / f"reports/{stage}/metrics.json")["skipped_steps"] == 0
    assert all(math.isfinite(v) for v in curve(repo, "adapt", "train/penalty"))
    kept = read_json(repo / "reports/adapt/metrics.json")["kept"]["dev"]
    averaged = read_json(repo / "reports/average/metrics.json")["dev"]  # α = 1: the adapted weights, scored in float32
    for lang in ("nl", "de"):
        assert averaged[lang]["wer"] == kept[lang]["wer"] and averaged[lang]["cer"] == kept[lang]["cer"], lang


def test_a_huge_lambda_holds_the_bf16_adapted_weights_near_theta_star(repo):
    anchor = load_file(repo / "models/pretrained/model.safetensors")
    fisher = load_file(repo / "models/importance/importance.safetensors")
    held = load_file(repo / "models/adapted/model.safetensors")
    dvc(repo, "exp", "run", "-S", "adapt.ewc_lambda=0")  # plain fine-tuning, the same bf16 steps otherwise
    free = load_file(repo / "models/adapted/model.safetensors")
    assert weighted_distance(held, anchor, fisher) < 0.5 * weighted_distance(free, anchor, fisher)
    run(repo, "git", "checkout", "--", ".")  # back to the committed bf16 run: params, lock, uncached metrics and curves
    dvc(repo, "checkout", "--force")  # and the cached models
    assert stages_run(dvc(repo, "repro")) == set()


def test_a_killed_bf16_adapt_reruns_to_the_uninterrupted_bytes(repo):
    whole = {name: sha256(repo / name) for name in ("models/adapted/model.safetensors", "reports/metrics.json")}
    kill_during(repo, "adapt", 0.5, after_checkpoint=True)
    assert stages_run(dvc(repo, "repro")) == {"adapt"}  # the same bytes again: average and eval are up to date
    assert {name: sha256(repo / name) for name in whole} == whole
