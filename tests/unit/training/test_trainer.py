"""The training core on real eSpeak clips: loss falling, the regulariser hooks, the keep rules and the forgetting
curve, and resume / repeat determinism of short CPU runs."""

import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import jiwer
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from forgetting.methods.penalty import EWCPenalty
from forgetting.params import load_params
from forgetting.training.batching import Split
from forgetting.training.decoding import transcribe
from forgetting.training.model import apply_training_config, build_model, build_processor, load_trained
from forgetting.training.regulariser import Regulariser
from forgetting.training.resume import last_checkpoint
from forgetting.training.step_guards import NonFiniteStepsError, OutOfMemoryError
from forgetting.training.trainer import TIMINGS_FILE, logging_steps, train_ctc
from tests.unit.checkpoints import german_ctc_replica, xls_r_replica

ROOT = Path(__file__).resolve().parents[3]
PARAMS = load_params(ROOT / "params.yaml")
# A micro run: 6 optimiser steps, evaluated and saved every 3, dropout and time masking on so that a resume
# must restore the RNG state to match.
MICRO = dataclasses.replace(PARAMS.pretrain, lr=3e-3, warmup_ratio=0.2, max_steps=6, batch_size=2, effective_batch_size=2,
                            eval_steps=3, dropout=0.05, mask_time_prob=0.05, dataloader_workers=0, save_total_limit=2)


class Term(Regulariser):
    """A loss-term regulariser from a function of the model (called once per training micro-batch)."""

    curve = "train/penalty"

    def __init__(self, function):
        self.function = function

    def loss(self, model, inputs, logits):
        return self.function(model)


def run(corpus, root: Path, params=MICRO, train=slice(0, 8), dev=slice(8, 12), regulariser=None, key="k" * 64, ewc=None,
        callbacks=(), model=None, extra_dev=None, keep="best_target_dev"):
    """One `train_ctc` run of a freshly built tiny model (seed 0), or of `model`, with everything written under `root`;
    `regulariser` a function of the model (a loss term) or a Regulariser; `ewc` (a function of the model) builds the
    regulariser from the model when given; `extra_dev` a second dev language ("de": those utterances)."""
    processor = build_processor(corpus.vocab)
    model = model if model is not None else build_model(PARAMS.model, processor.tokenizer.get_vocab(), seed=0)
    if ewc is not None:
        apply_training_config(model, params)  # as the adapt stage does: the penalty anchors what trains
        regulariser = ewc(model)
    regularisers = [] if regulariser is None else [regulariser if isinstance(regulariser, Regulariser) else Term(regulariser)]
    dev_sets = {"nl": Split(corpus.utterances[dev], corpus.clips_dir)}
    if extra_dev is not None:
        dev_sets["de"] = Split(corpus.utterances[extra_dev], corpus.clips_dir)
    result = train_ctc(model, processor, Split(corpus.utterances[train], corpus.clips_dir), dev_sets, params, "micro",
                       out_dir=root / "model", reports_dir=root / "reports", checkpoints_root=root / "checkpoints",
                       run_key=key, keep=keep, regularisers=regularisers, extra_callbacks=callbacks)
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
    assert result.steps == result.kept_step == 30 and result.resumed_from_step is None
    summary = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    # results only: no timings, throughput, gradient norm or learning rate (they differ on every run)
    assert summary == {"kept": {"rule": "best_target_dev", "step": 30, "dev": result.dev}, "skipped_steps": 0, "step": 30}
    assert 0 <= result.dev["nl"]["cer"] <= 1.5
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.safetensors", "config.json", "vocab.json"}
    assert not (tmp_path / "checkpoints" / f"micro-{'k' * 16}").exists()  # removed once the model is written
    # no dvc.yaml, no params.yaml; the timings in a file of their own
    assert {p.name for p in (tmp_path / "reports").iterdir()} == {"metrics.json", "plots", TIMINGS_FILE}
    assert json.loads((tmp_path / "reports" / TIMINGS_FILE).read_text())["runtime"] > 0
    curves = {str(p.relative_to(tmp_path / "reports" / "plots" / "metrics")) for p in (tmp_path / "reports").rglob("*.tsv")}
    assert curves == {"train/loss.tsv", "train/ctc_loss.tsv", "train/grad_norm.tsv", "train/learning_rate.tsv",
                      "eval/nl_loss.tsv", "eval/nl_wer.tsv", "eval/nl_cer.tsv", "eval/average_wer.tsv"}


def test_a_loss_term_is_added_to_every_micro_batch_and_logged_apart(corpus, tmp_path):
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


class Watched(EWCPenalty):
    """The L2 penalty, recording when the core adds its gradient and asks for its value."""

    def __init__(self, model, lam):
        super().__init__(model, None, lam)
        self.gradients, self.values = [], 0

    def add_gradient(self, model, scale=1.0):
        self.gradients.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        super().add_gradient(model, scale)

    def value(self, model):
        self.values += 1
        return super().value(model)


def test_a_penalty_gradient_is_added_once_per_optimiser_step_after_the_micro_batches(corpus, tmp_path):
    # 4 steps of 2 micro-batches each, logged at steps 1 and 4 (logging_steps(4) = 4, and the first step)
    params = dataclasses.replace(MICRO, max_steps=4, eval_steps=4, batch_size=2, effective_batch_size=4)
    processor = build_processor(corpus.vocab)
    model = build_model(PARAMS.model, processor.tokenizer.get_vocab(), seed=0)
    penalty = Watched(model, lam=5.0)
    run(corpus, tmp_path, params, regulariser=penalty, model=model)
    assert len(penalty.gradients) == 4  # once per optimiser step, not once per micro-batch
    assert all(all(g is not None and bool(g.abs().sum() > 0) for g in step) for step in penalty.gradients)  # after CTC
    assert penalty.values == 2  # computed only when it is logged
    loss, ctc, logged = (curve(tmp_path / "reports", f"train/{name}") for name in ("loss", "ctc_loss", "penalty"))
    assert sorted(logged) == [1, 4] and logged[4] > 0
    for step in loss:
        assert loss[step] == pytest.approx(ctc[step] + logged[step], rel=1e-4)


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
    assert (result.dev, result.kept_step) == (expected.dev, expected.kept_step)
    assert all(torch.equal(weights[name], expected_weights[name]) for name in weights)
    assert sorted(curve(tmp_path / "reports", "eval/nl_wer")) == [3, 6]  # the curve continues across the resume


def interrupt_at(micro_batch: int):
    """A zero regulariser that raises in the given training micro-batch (never for 0), like a kill at that moment."""
    calls = 0

    def regulariser(model: torch.nn.Module) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == micro_batch:
            raise Interrupted
        return torch.zeros(())
    return regulariser


def curve_rows(reports: Path) -> dict[str, list[str]]:
    """Every curve file's lines, by name."""
    metrics = reports / "plots" / "metrics"
    return {str(p.relative_to(metrics)): p.read_text().splitlines() for p in sorted(metrics.rglob("*.tsv"))}


def test_a_resumed_run_logs_the_curves_of_an_uninterrupted_one(corpus, tmp_path):
    # logs at steps 1, 6, 12, 18, 24; checkpoints at 12 and 24: a kill in step 22 has logged step 18 past the checkpoint
    params = dataclasses.replace(MICRO, max_steps=24, eval_steps=12)
    run(corpus, tmp_path / "whole", params, regulariser=interrupt_at(0))
    with pytest.raises(Interrupted):
        run(corpus, tmp_path / "killed", params, regulariser=interrupt_at(22))
    assert sorted(curve(tmp_path / "killed" / "reports", "train/loss")) == [1, 6, 12, 18]
    shutil.rmtree(tmp_path / "killed" / "reports")  # as `dvc repro` does with a stage's outputs before it reruns it
    result, _ = run(corpus, tmp_path / "killed", params, regulariser=interrupt_at(0))
    assert result.resumed_from_step == 12
    assert curve_rows(tmp_path / "killed" / "reports") == curve_rows(tmp_path / "whole" / "reports")
    assert results_of(tmp_path / "killed" / "reports") == results_of(tmp_path / "whole" / "reports")


def results_of(reports: Path) -> dict:
    """The stage's metrics.json: results only (the timings are in their own file)."""
    return json.loads((reports / "metrics.json").read_text())


def test_a_half_written_checkpoint_is_not_resumed_from(corpus, full_run, tmp_path):
    with pytest.raises(Interrupted):
        run(corpus, tmp_path, regulariser=interrupt_at(4))
    state = tmp_path / "checkpoints" / f"micro-{'k' * 16}" / "checkpoint-3" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:50])  # killed while the Trainer wrote its state
    result, weights = run(corpus, tmp_path)
    assert result.resumed_from_step is None and result.steps == 6  # started afresh ...
    assert all(torch.equal(weights[name], full_run[1][name]) for name in weights)  # ... to the same weights


class StepWatch(TrainerCallback):
    """Records, per optimiser step, whether the weights and the learning rate changed across `optimizer.step()`."""

    def __init__(self):
        self.moved: dict[int, bool] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before = [p.detach().clone() for p in model.parameters()]

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.moved[state.global_step + 1] = any(not torch.equal(a, p) for a, p in zip(self.before, model.parameters(),
                                                                                      strict=True))


def poison(micro_batches: set[int], where: str):
    """A regulariser that is zero, except in the given micro-batches: a NaN loss, or a NaN gradient."""
    calls = 0

    def regulariser(model: torch.nn.Module) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls not in micro_batches:
            return torch.zeros(())
        if where == "loss":
            return torch.tensor(float("nan"))  # the model's gradient stays finite: only the loss check sees it
        return model.lm_head.bias.sum() * float("nan")
    return regulariser


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_counted_and_named(corpus, tmp_path, caplog, where):
    watch = StepWatch()
    params = dataclasses.replace(MICRO, max_skipped_fraction=0.2, warmup_ratio=0.0)  # 1 of 6 steps allowed; lr > 0 at once
    with caplog.at_level(logging.WARNING, logger="forgetting.training.trainer"):
        result, weights = run(corpus, tmp_path, params, regulariser=poison({4}, where), callbacks=[watch])
    assert watch.moved == {1: True, 2: True, 3: True, 4: False, 5: True, 6: True}  # step 4 was not applied
    assert result.skipped_steps == (4,) and all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["skipped_steps"] == 1
    clips = {u.path for u in corpus.utterances[:8]}
    (message,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert message.startswith("step 4 skipped") and {c for c in clips if c in message}  # its clips, by name


def test_the_skipped_steps_survive_a_resume(corpus, tmp_path):
    params = dataclasses.replace(MICRO, max_skipped_fraction=0.2)
    not_finite, kill = poison({2}, "loss"), interrupt_at(4)

    def term(model: torch.nn.Module) -> torch.Tensor:  # step 2 is not finite; killed in step 4, after checkpoint 3
        kill(model)
        return not_finite(model)
    with pytest.raises(Interrupted):
        run(corpus, tmp_path, params, regulariser=term)
    result, _ = run(corpus, tmp_path, params)
    assert result.resumed_from_step == 3 and result.skipped_steps == (2,)
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["skipped_steps"] == 1


class GradientNorm(TrainerCallback):
    """The norm of the gradient the optimiser steps with (after clipping), per optimiser step."""

    def __init__(self):
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


def test_the_penalty_gradient_is_clipped_with_the_ctc_gradient(corpus, tmp_path):
    watch = GradientNorm()
    run(corpus, tmp_path, ewc=lambda model: EWCPenalty(model, None, lam=1e4), callbacks=[watch])
    assert len(watch.norms) == MICRO.max_steps
    assert max(watch.norms) <= MICRO.max_grad_norm * (1 + 1e-5)  # the penalty's part (huge from step 2) included


def test_too_many_non_finite_steps_stop_the_run_naming_the_bound(corpus, tmp_path):
    params = dataclasses.replace(MICRO, max_skipped_fraction=0.2)
    with pytest.raises(NonFiniteStepsError, match=r"2 of 6 optimiser steps skipped .*steps \[2, 4\]\), more than "
                                                  r"max_skipped_fraction = 0\.2"):
        run(corpus, tmp_path, params, regulariser=poison({2, 4}, "gradient"))


class MemoryLimit(TrainerCallback):
    """Injects the allocation failure of a GPU that holds at most `clips` utterances, or `samples` audio samples, in
    a forward pass (or, with `in_backward`, fails in the backward pass instead, once the forward has run)."""

    def __init__(self, clips: int = 1, samples: int | None = None, in_backward: bool = False):
        self.clips, self.samples, self.in_backward, self.failures = clips, samples, in_backward, 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.in_backward:
            model.register_forward_hook(self.fail_in_backward, with_kwargs=True)
        else:
            model.register_forward_pre_hook(self.fail_in_forward, with_kwargs=True)

    def too_big(self, module, args, kwargs) -> bool:
        audio = kwargs.get("input_values", args[0] if args else None)
        return module.training and (len(audio) > self.clips or bool(self.samples and audio.shape[1] > self.samples))

    def fail_in_forward(self, module, args, kwargs):
        if self.too_big(module, args, kwargs):
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def fail_in_backward(self, module, args, kwargs, output):
        if self.too_big(module, args, kwargs):
            self.failures += 1

            def fail(grad):
                raise torch.OutOfMemoryError("CUDA out of memory in the backward pass (injected)")
            output.logits.register_hook(fail)


@pytest.mark.parametrize("in_backward", [False, True])
def test_out_of_memory_halves_the_physical_batch_and_keeps_the_gradient(corpus, tmp_path, caplog, in_backward):
    # batch 4 on a "GPU" that holds 1 clip: cut into 2, then 4 pieces; the same run as batch 1 x accumulation 4
    params = dataclasses.replace(MICRO, batch_size=4, effective_batch_size=4, dropout=0.0, mask_time_prob=0.0)
    limit = MemoryLimit(clips=1, in_backward=in_backward)

    def l2(model: torch.nn.Module) -> EWCPenalty:  # a penalty: added once per optimiser step, not once per piece
        return EWCPenalty(model, None, lam=1.0)

    with caplog.at_level(logging.WARNING, logger="forgetting.training.trainer"):
        result, weights = run(corpus, tmp_path / "oom", params, ewc=l2, callbacks=[limit])
    _, expected = run(corpus, tmp_path / "small", dataclasses.replace(params, batch_size=1), ewc=l2)
    assert limit.failures == 2 and result.skipped_steps == ()
    assert all(torch.allclose(weights[n], expected[n], rtol=0, atol=1e-6) for n in weights)
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert warnings[0].startswith("out of memory at step 1 with 4 utterances in a forward pass: each micro-batch is cut "
                                  "into 2 pieces") and "the micro-batch is retried" in warnings[0]
    assert len(warnings) == 2


def test_a_clip_too_long_for_memory_alone_is_named(corpus, tmp_path):
    longest = max(corpus.utterances[:8], key=lambda u: u.duration_s)
    limit = MemoryLimit(clips=8, samples=round(longest.duration_s * 16_000) - 1)  # only the longest clip fails
    with pytest.raises(OutOfMemoryError, match=rf"{longest.path} does not fit in memory even alone"):
        run(corpus, tmp_path, callbacks=[limit])


def test_every_checkpoint_falls_on_a_log_step():
    assert [logging_steps(e) for e in (100, 250, 12, 7, 3, 1)] == [10, 10, 6, 7, 3, 1]


def test_zero_lambda_ewc_is_plain_fine_tuning(corpus, full_run, tmp_path):
    def zero_lambda(model: torch.nn.Module) -> EWCPenalty:
        fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
        return EWCPenalty(model, fisher, lam=0.0)

    _, weights = run(corpus, tmp_path, ewc=zero_lambda)
    _, expected = full_run
    assert all(torch.equal(weights[name], expected[name]) for name in weights)


def test_huge_lambda_keeps_the_weights_near_the_anchor(corpus, full_run, tmp_path):
    processor = build_processor(corpus.vocab)
    anchor = build_model(PARAMS.model, processor.tokenizer.get_vocab(), seed=0).state_dict()
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


@pytest.mark.parametrize("keep", ["last", "best_target_dev", "best_average_dev"])
def test_each_keep_rule_keeps_its_step_and_the_source_dev_split_gives_the_forgetting_curve(corpus, tmp_path, keep):
    # target dev "nl" (the first dev language) and a second, "de", evaluated at steps 2, 4 and 6
    assert len(corpus.utterances) >= 12
    params = dataclasses.replace(MICRO, eval_steps=2, mask_time_prob=0.0, dropout=0.0)
    result, _ = run(corpus, tmp_path, params, train=slice(0, 6), dev=slice(6, 9), extra_dev=slice(9, 12), keep=keep)
    reports = tmp_path / "reports"
    target, source, average = (curve(reports, f"eval/{name}") for name in ("nl_wer", "de_wer", "average_wer"))
    assert sorted(target) == sorted(source) == sorted(average) == [2, 4, 6]  # a point per evaluation step, each language
    for step in average:
        assert average[step] == pytest.approx((target[step] + source[step]) / 2)
    rule = {"last": None, "best_target_dev": target, "best_average_dev": average}[keep]
    expected = 6 if rule is None else min(rule, key=lambda step: (rule[step], step))  # the first of equal bests
    assert result.kept_step == expected and result.keep == keep
    # the written model is the kept step's: its dev CER, recomputed, is the one logged at that step
    model, processor = load_trained(tmp_path / "model")
    for lang, dev in (("nl", slice(6, 9)), ("de", slice(9, 12))):
        utterances = corpus.utterances[dev]
        hypotheses = transcribe(model, processor, utterances, corpus.clips_dir, batch_size=4, progress=False)
        cer = jiwer.cer([u.text for u in utterances], hypotheses)
        assert cer == pytest.approx(result.dev[lang]["cer"]) == pytest.approx(curve(reports, f"eval/{lang}_cer")[expected])


@pytest.mark.parametrize("replica", [xls_r_replica, german_ctc_replica], ids=["xls-r", "german-ctc-bin-with-lm"])
def test_a_published_checkpoint_layout_trains_through_model_name(corpus, tmp_path, replica):
    replica(tmp_path / "start")
    processor = build_processor(corpus.vocab)
    start = dataclasses.replace(PARAMS.model, name=str(tmp_path / "start"))
    model = build_model(start, processor.tokenizer.get_vocab(), seed=0)
    result, weights = run(corpus, tmp_path / "run", dataclasses.replace(MICRO, max_steps=3), model=model)
    assert result.steps == 3 and all(torch.isfinite(w).all() for w in weights.values())
    trained, _ = load_trained(tmp_path / "run" / "model")  # written in our layout (safetensors), reloaded as ours
    assert trained.lm_head.out_features == len(processor.tokenizer)
