"""The Trainer subclass under mixed precision on the CPU: dev scores in float32 under bf16 autocast, and fp16's loss
scaling with a real `GradScaler("cpu")` inside accelerate's real `AcceleratedOptimizer`, through the Trainer's own
loop. accelerate gives no scaler on the CPU, so `scaled_on_cpu` builds the pair as accelerate does under fp16 on a GPU:
the scaler scales every backward pass, unscales before clipping and lives in the optimiser's wrapper; only the autocast
to float16 is left out (the CPU arithmetic stays float32, so the scaled run can be compared with the unscaled one).
Both of torch's AdamW paths are run: the fused one (transformers' default), whose step the scaler always calls, and the
plain one, whose step it calls only when no inf was found."""

import dataclasses

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.training_args import OptimizerNames

from forgetting.training import trainer as training_core
from forgetting.training.ctc_trainer import CTCTrainer
from forgetting.training.decoding import blank_padding_frames
from forgetting.training.step_guards import NonFiniteStepsError
from tests.unit.tiny import collate, tiny_model, utterances
from tests.unit.training.test_trainer import MICRO, StepWatch, poison, run

INIT_SCALE = 2.0**10


def scaled_on_cpu(scaled: bool, init_scale: float = INIT_SCALE, fused: bool = True) -> type[CTCTrainer]:
    """The CTC trainer over fused or plain AdamW, with fp16's loss scaler and no autocast when `scaled`."""

    class ScaledOnCPU(CTCTrainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            self.args.optim = OptimizerNames.ADAMW_TORCH_FUSED if fused else OptimizerNames.ADAMW_TORCH
            if not scaled:
                return
            scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=1000)
            self.accelerator.scaler = scaler  # accelerate scales the loss and wraps the optimiser with it

            def unscale_gradients(optimizer=None):  # what accelerate does before clipping under fp16
                for wrapped in self.accelerator._optimizers:
                    scaler.unscale_(wrapped.optimizer)
            self.accelerator.unscale_gradients = unscale_gradients
    return ScaledOnCPU


class Final(TrainerCallback):
    """The optimiser, the schedule and the scaler after the last optimiser step."""

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.scheduler_steps = lr_scheduler.last_epoch
        self.adam_steps = {float(s["step"]) for s in optimizer.optimizer.state.values()}
        self.fused = bool(optimizer.optimizer.defaults.get("fused"))
        self.scale = optimizer.scaler.get_scale() if optimizer.scaler is not None else None
        self.skipped = optimizer.step_was_skipped


def overflow_at(micro_batches: set[int] | None):
    """A zero loss term whose gradient is not finite in the given micro-batches (all of them for None), the loss
    staying finite: what an fp16 overflow in the backward pass leaves."""
    calls = 0

    def term(model: torch.nn.Module) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if micro_batches is not None and calls not in micro_batches:
            return torch.zeros(())
        return ((model.lm_head.bias * 0.0).abs().sqrt() * 0.0).sum()  # 0, with d sqrt(0) = inf
    return term


def scaled_run(corpus, root, monkeypatch, scaled: bool, where: str, fused: bool = True, init_scale: float = INIT_SCALE):
    """Six optimiser steps of which step 2 has a non-finite loss, or a non-finite gradient under a finite loss; with or
    without the loss scaler."""
    monkeypatch.setattr(training_core, "CTCTrainer", scaled_on_cpu(scaled, init_scale, fused))
    watch, final = StepWatch(), Final()
    params = dataclasses.replace(MICRO, max_skipped_fraction=0.2, warmup_ratio=0.0)
    term = poison({2}, "loss") if where == "loss" else overflow_at({2} if where == "gradient" else None)
    try:
        result, weights = run(corpus, root, params, regulariser=term, callbacks=[watch, final])
    finally:
        monkeypatch.undo()
    return result, weights, watch, final


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_an_fp16_skip_goes_through_the_loss_scaler_as_an_overflow(corpus, tmp_path, monkeypatch, fused):
    plain, plain_weights, plain_watch, plain_final = scaled_run(corpus, tmp_path / "fp32", monkeypatch, False, "loss",
                                                                fused)
    scaled, scaled_weights, scaled_watch, scaled_final = scaled_run(corpus, tmp_path / "fp16", monkeypatch, True, "loss",
                                                                    fused)
    assert scaled_final.fused is fused
    for result, watch, final in ((plain, plain_watch, plain_final), (scaled, scaled_watch, scaled_final)):
        assert result.skipped_steps == (2,)  # counted: a non-finite loss is ours to skip, not a routine overflow
        assert watch.moved == {1: True, 2: False, 3: True, 4: True, 5: True, 6: True}
        assert final.scheduler_steps == 5 and final.adam_steps == {5.0}  # the schedule and Adam skipped it too
    assert scaled_final.scale == INIT_SCALE * 0.5  # backed off once, as for an overflow
    for name, weight in plain_weights.items():  # scaling by powers of two is exact: the same run
        torch.testing.assert_close(scaled_weights[name], weight, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_an_fp16_non_finite_gradient_is_the_scalers_routine_overflow(corpus, tmp_path, monkeypatch, fused):
    result, _, watch, final = scaled_run(corpus, tmp_path, monkeypatch, True, "gradient", fused)
    assert result.skipped_steps == ()  # the scaler's business: not counted against max_skipped_fraction
    assert watch.moved[2] is False and final.scheduler_steps == 5 and final.adam_steps == {5.0}
    assert final.scale == INIT_SCALE * 0.5


def test_an_fp16_run_whose_loss_scale_collapses_is_stopped(corpus, tmp_path, monkeypatch):
    with pytest.raises(NonFiniteStepsError, match=r"step 4: the fp16 loss scale has fallen to 0\.5: the gradient "
                                                  r"overflows at any scale"):
        scaled_run(corpus, tmp_path, monkeypatch, True, "always", init_scale=4.0)  # 4 -> 2 -> 1 -> 0.5


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
