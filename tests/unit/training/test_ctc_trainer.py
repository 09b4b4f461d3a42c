"""The Trainer subclass under mixed precision on the CPU: dev scores in float32 under bf16 autocast, and fp16's loss
scaling: a real `GradScaler("cpu")` inside accelerate's real
`AcceleratedOptimizer`, through the Trainer's own loop. accelerate gives no scaler on the CPU, so `ScaledOnCPU` builds
the pair as accelerate does under fp16 on a GPU: the scaler scales every backward pass, unscales before clipping and
lives in the optimiser's wrapper; only the autocast to float16 is left out (the CPU arithmetic stays float32, so the
scaled run can be compared with the unscaled one)."""

import dataclasses

import torch
from transformers import TrainerCallback, TrainingArguments

from forgetting.training import trainer as training_core
from forgetting.training.ctc_trainer import CTCTrainer
from forgetting.training.decoding import blank_padding_frames
from tests.unit.tiny import collate, tiny_model, utterances
from tests.unit.training.test_trainer import MICRO, StepWatch, poison, run

INIT_SCALE = 2.0**10


class ScaledOnCPU(CTCTrainer):
    """The CTC trainer with fp16's loss scaler and no autocast."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=1000)
        self.accelerator.scaler = scaler  # accelerate scales the loss and wraps the optimiser with it

        def unscale_gradients(optimizer=None):  # what accelerate does before clipping under fp16
            for wrapped in self.accelerator._optimizers:
                scaler.unscale_(wrapped.optimizer)
        self.accelerator.unscale_gradients = unscale_gradients


class Final(TrainerCallback):
    """The optimiser, the schedule and the scaler after the last optimiser step."""

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.scheduler_steps = lr_scheduler.last_epoch
        self.adam_steps = {float(s["step"]) for s in optimizer.optimizer.state.values()}
        self.scale = optimizer.scaler.get_scale() if optimizer.scaler is not None else None
        self.skipped = optimizer.step_was_skipped


def overflow_at(micro_batch: int):
    """A zero loss term whose gradient is not finite in one micro-batch (the loss stays finite): what an fp16 overflow
    in the backward pass leaves."""
    calls = 0

    def term(model: torch.nn.Module) -> torch.Tensor:
        nonlocal calls
        calls += 1
        x = model.lm_head.bias * (0.0 if calls == micro_batch else 1.0)
        return (x.abs().sqrt() * 0.0).sum() if calls == micro_batch else torch.zeros(())  # d sqrt(0) = inf
    return term


def scaled_run(corpus, root, monkeypatch, scaled: bool, where: str):
    """Six optimiser steps of which step 2 has a non-finite loss, or a non-finite gradient under a finite loss; with or
    without the loss scaler."""
    if scaled:
        monkeypatch.setattr(training_core, "CTCTrainer", ScaledOnCPU)
    watch, final = StepWatch(), Final()
    params = dataclasses.replace(MICRO, max_skipped_fraction=0.2, warmup_ratio=0.0)
    term = poison({2}, "loss") if where == "loss" else overflow_at(2)
    result, weights = run(corpus, root, params, regulariser=term, callbacks=[watch, final])
    monkeypatch.undo()
    return result, weights, watch, final


def test_a_skipped_step_under_the_loss_scaler_is_skipped_by_the_scaler(corpus, tmp_path, monkeypatch):
    plain, plain_weights, plain_watch, plain_final = scaled_run(corpus, tmp_path / "fp32", monkeypatch, False, "loss")
    scaled, scaled_weights, scaled_watch, scaled_final = scaled_run(corpus, tmp_path / "fp16", monkeypatch, True, "loss")
    for result, watch, final in ((plain, plain_watch, plain_final), (scaled, scaled_watch, scaled_final)):
        assert result.skipped_steps == (2,)  # counted: a non-finite loss is ours to skip, not a routine overflow
        assert watch.moved == {1: True, 2: False, 3: True, 4: True, 5: True, 6: True}
        assert final.scheduler_steps == 5 and final.adam_steps == {5.0}  # the schedule and Adam skipped it too
    assert scaled_final.scale == INIT_SCALE * 0.5  # backed off once, as for an overflow
    for name, weight in plain_weights.items():  # scaling by powers of two is exact: the same run
        torch.testing.assert_close(scaled_weights[name], weight, rtol=1e-6, atol=1e-7, msg=name)


def test_a_non_finite_gradient_under_the_loss_scaler_is_its_routine_overflow(corpus, tmp_path, monkeypatch):
    result, _, watch, final = scaled_run(corpus, tmp_path, monkeypatch, True, "gradient")
    assert result.skipped_steps == ()  # the scaler's business: not counted against max_skipped_fraction
    assert watch.moved[2] is False and final.scheduler_steps == 5 and final.adam_steps == {5.0}
    assert final.scale == INIT_SCALE * 0.5


def test_dev_scores_under_bf16_are_computed_in_float32(tmp_path):
    model = tiny_model().eval()
    inputs = collate(utterances([1.0, 1.6]))
    with torch.no_grad():
        expected = blank_padding_frames(model, model(**inputs).logits, inputs["attention_mask"])
    args = TrainingArguments(output_dir=str(tmp_path), bf16=True, use_cpu=True, report_to="none")
    trainer = CTCTrainer(model=model, args=args, dev_references={"nl": []})
    prepared = trainer.accelerator.prepare_model(model, evaluation_mode=True)  # as the Trainer's evaluation does
    with torch.no_grad():
        autocast = prepared(**inputs).logits
    assert not torch.equal(autocast, model._original_forward(**inputs).logits)  # bf16 autocast is on in the forward
    _, logits, _ = trainer.prediction_step(prepared, dict(inputs), prediction_loss_only=False)
    assert logits.dtype == torch.float32 and torch.equal(logits, expected)  # the dev scores' logits: float32's
