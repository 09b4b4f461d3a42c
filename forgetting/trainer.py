"""The CTC training core shared by pretrain and adapt: transformers' Trainer over lazily decoded clips
(`forgetting.batching`), with a regulariser hook, dev WER/CER, dvclive curves (`forgetting.curves`), and
checkpoints that only the same run resumes (`forgetting.resume`).

Knows nothing of DVC or of EWC: the stage reads files and params, and passes a `regulariser(model) -> scalar`
when it has one. Loss bookkeeping: the Trainer divides each micro-batch loss (CTC + penalty) by the
gradient accumulation steps, so a penalty added to every micro-batch counts once per optimiser step.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import torch
from accelerate.utils.memory import clear_device_cache
from dvclive import Live
from torch.utils.data import Sampler, SequentialSampler
from transformers import (
    EarlyStoppingCallback,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from forgetting.batching import CTCCollator, LengthGroupedEpochSampler, UtteranceDataset, batch_rows
from forgetting.corpus import Utterance, normalise_text
from forgetting.curves import TRAIN_CTC_LOSS, TRAIN_PENALTY, DVCLiveCurves, log_key, restore_curves
from forgetting.decoding import blank_padding_frames, greedy_decode
from forgetting.model import apply_training_config, save_model
from forgetting.params import TrainParams
from forgetting.resume import checkpoint_step, last_checkpoint
from forgetting.step_guards import OutOfMemoryError, SkippedSteps

log = logging.getLogger(__name__)

Regulariser = Callable[[torch.nn.Module], torch.Tensor]
LOGGING_STEPS = 10  # at most this many optimiser steps between training-loss log lines (and dvclive points)


@dataclass(frozen=True)
class TrainResult:
    """The kept (best dev WER) model's dev scores, and how the run went."""

    best_dev_wer: float
    best_dev_cer: float
    best_step: int
    steps: int  # optimiser steps taken in total, including those before a resume
    skipped_steps: tuple[int, ...]  # of them, those not applied (non-finite loss or gradient)
    resumed_from_step: int | None
    train_samples_per_second: float  # of this process's run, evaluations included

    def describe(self) -> str:
        """`800 steps, resumed at step 100; best dev WER 0.412, CER 0.121 at step 700`, for a stage's summary line."""
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step is not None else ""
        return (f"{self.steps} steps{resumed}; best dev WER {self.best_dev_wer:.3f}, CER {self.best_dev_cer:.3f} "
                f"at step {self.best_step}")


class _CTCTrainer(Trainer):
    """Trainer with the regulariser hook, CTC and penalty logged apart, our samplers, and padded frames blanked."""

    # The model's forward takes **kwargs, so transformers 5 would assume its loss is already scaled for
    # gradient accumulation; CTC "mean" is a per-batch mean, so the Trainer must divide it.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, regulariser: Regulariser | None = None, max_skipped_fraction: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.regulariser = regulariser
        self.max_skipped_fraction = max_skipped_fraction
        self._loss_sums: torch.Tensor | None = None  # (CTC, penalty, finite micro-batches) since the last log
        self._bad_loss: torch.Tensor | None = None  # any non-finite training loss since the last optimiser step
        self._step_paths: list[str] = []  # the clips of this optimiser step's micro-batches
        self._skip = False
        self._chunks = 1  # pieces each micro-batch is cut into: doubled at each out-of-memory
        self._chunk = (1.0, True)  # the running piece's share of its micro-batch, and whether it adds the penalty
        self._micro_batches_in_step = 0
        self._piece_size, self._piece_paths = 0, []  # the piece in its forward and backward pass
        self._touched = False  # whether this micro-batch has reached a backward pass (its gradient may be added)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        paths = inputs.pop("paths", [])
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            share, first = self._chunk
            ctc = loss * share  # CTC "mean" averages over the batch: a piece counts by its share of the utterances
            unwrapped = self.accelerator.unwrap_model(model)
            with_penalty = self.regulariser is not None and first  # once per micro-batch, not once per piece
            penalty = self.regulariser(unwrapped) if with_penalty else torch.zeros((), device=loss.device)
            loss = ctc + penalty
            # on the device, no sync per micro-batch: a non-finite loss is found at the optimiser step
            finite = torch.isfinite(loss.detach())
            self._bad_loss = ~finite if self._bad_loss is None else self._bad_loss | ~finite
            stats = torch.stack([ctc.detach().mean(), penalty.detach(), finite * share]).float()
            sums = torch.where(finite, stats, 0.0)
            self._loss_sums = sums if self._loss_sums is None else self._loss_sums + sums
            self._step_paths += paths
            self._touched = True
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One micro-batch, cut into `_chunks` pieces whose losses are weighted by their share, so the gradient is the
        whole micro-batch's. An out-of-memory error doubles the pieces (half the physical batch, twice the
        accumulation: the effective batch is unchanged, and so is the gradient) and retries the micro-batch when its
        gradient is still untouched: it failed before any backward pass, or it is the first micro-batch of its
        optimiser step (the gradients are then cleared). Otherwise the step is skipped. A clip too long for memory
        even alone is named."""
        self._micro_batches_in_step += 1
        self._touched = False
        while True:
            try:
                return self._training_step_in_pieces(model, inputs, num_items_in_batch)
            except torch.OutOfMemoryError as err:
                clear_device_cache()
                if self._piece_size == 1:
                    raise OutOfMemoryError(f"{', '.join(self._piece_paths) or 'a clip'} does not fit in memory even "
                                           f"alone: lower validate.max_seconds, or train a smaller model or in fp16/bf16"
                                           ) from err
                first = self._micro_batches_in_step == 1
                retry = first or not self._touched
                self._chunks *= 2
                log.warning("out of memory at step %d with %d utterances in a forward pass: each micro-batch is cut "
                            "into %d pieces from now on (the effective batch is unchanged); %s",
                            self.state.global_step + 1, self._piece_size, self._chunks,
                            "the micro-batch is retried" if retry else "the step is skipped (part of its gradient "
                            "may already have been added)")
                if not retry:
                    self._bad_loss = torch.ones((), dtype=torch.bool)
                    return torch.zeros((), device=self.args.device)
                if self._touched:  # the first micro-batch of its step: nothing else is in the gradients yet
                    model.zero_grad(set_to_none=True)
                    self._touched = False

    def _training_step_in_pieces(self, model, inputs, num_items_in_batch):
        """The Trainer's step on each piece of the micro-batch; the sum of their (weighted) losses."""
        total, size = None, len(inputs["input_values"])
        bounds = [round(i * size / self._chunks) for i in range(self._chunks + 1)]
        for start, end in ((a, b) for a, b in itertools.pairwise(bounds) if b > a):
            self._chunk = ((end - start) / size, total is None)  # the penalty goes with the first piece
            self._piece_size, self._piece_paths = end - start, inputs.get("paths", [])[start:end]
            piece = inputs if end - start == size else batch_rows(inputs, start, end)
            loss = super().training_step(model, piece, num_items_in_batch)
            total = loss if total is None else total + loss
        self._chunk = (1.0, True)
        return total

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        step = optimizer.step

        def step_unless_skipped(*step_args, **step_kwargs):
            return None if self._skip else step(*step_args, **step_kwargs)

        optimizer.step = step_unless_skipped
        return optimizer

    def _get_grad_norm(self, model, grad_norm=None):
        """The gradient norm, and the decision whether this optimiser step is applied: not when the loss of one of its
        micro-batches (CTC + penalty) or the gradient (the penalty's included) is not finite. A skipped step leaves
        the weights, the optimiser state and the learning-rate schedule as they were, is counted and names its clips."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        bad = ~torch.isfinite(torch.as_tensor(grad_norm))
        if self._bad_loss is not None:
            bad = bad | self._bad_loss.to(bad.device)
        self._skip = bool(bad)  # one host sync per optimiser step, as a GradScaler makes
        self.optimizer._is_overflow = self._skip  # the AcceleratedOptimizer's flag: the scheduler does not step either
        if self._skip:
            self._skipped_steps().record(self.state.global_step + 1, self._step_paths, self.max_skipped_fraction,
                                         self.state.max_steps)
        self._bad_loss, self._step_paths, self._micro_batches_in_step = None, [], 0
        return grad_norm

    def _skipped_steps(self) -> SkippedSteps:
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, SkippedSteps))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_sums is not None:  # a training log line, not an evaluation
            ctc, penalty = (self._loss_sums[:2] / self._loss_sums[2]).tolist()  # means over the finite micro-batches
            logs = {**logs, log_key(TRAIN_CTC_LOSS): ctc,
                    **({log_key(TRAIN_PENALTY): penalty} if self.regulariser is not None else {})}
            self._loss_sums = None
        super().log(logs, start_time)

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return LengthGroupedEpochSampler(dataset.lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                         self.args.data_seed)

    def _get_eval_sampler(self, eval_dataset) -> Sampler:
        return SequentialSampler(eval_dataset)  # in dataset order: compute_metrics pairs predictions with its texts

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is not None:
            logits = blank_padding_frames(self.accelerator.unwrap_model(model), logits, inputs["attention_mask"])
        return loss, logits, labels


def _argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch, frames, vocab) logits -> (batch, frames) ids, so evaluation never accumulates full logits."""
    return logits.argmax(-1)


def dev_error_rates(references: Sequence[str], processor: Wav2Vec2Processor) -> Callable[[EvalPrediction], dict]:
    """`compute_metrics` for the Trainer: corpus WER and CER (jiwer) of greedy hypotheses, normalised by
    `normalise_text`, against `references` (normalised texts, in the dev dataset's order)."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        hypotheses = [normalise_text(h) for h in greedy_decode(prediction.predictions, processor.tokenizer)]
        return {"wer": jiwer.wer(list(references), hypotheses), "cer": jiwer.cer(list(references), hypotheses)}

    return compute


def logging_steps(eval_steps: int) -> int:
    """Optimiser steps between training-loss log lines: the largest divisor of `eval_steps` up to LOGGING_STEPS, so
    that every checkpoint falls on a log step. A logged loss is the mean since the previous log, and a resumed run
    starts that mean afresh at its checkpoint: only then does it log exactly the curve an uninterrupted run logs."""
    return max(d for d in range(1, LOGGING_STEPS + 1) if eval_steps % d == 0)


def _training_arguments(params: TrainParams, stage: str, seed: int, run_dir: Path) -> TrainingArguments:
    gpu = torch.cuda.is_available()
    if (params.fp16 or params.bf16) and not gpu:
        log.warning("%s: fp16/bf16 requested but no GPU: training in float32 on the CPU", stage)
    args = TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=params.lr,
        warmup_steps=params.warmup_ratio,  # a float < 1 is a fraction of the total steps in transformers 5
        max_steps=params.max_steps if params.max_steps is not None else -1,
        num_train_epochs=params.epochs if params.epochs is not None else 1.0,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        fp16=params.fp16 and gpu,
        bf16=params.bf16 and gpu,
        eval_strategy="steps", eval_steps=params.eval_steps,
        save_strategy="steps", save_steps=params.eval_steps, save_total_limit=params.save_total_limit,
        load_best_model_at_end=True, metric_for_best_model="wer", greater_is_better=False,
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives a resume
        logging_strategy="steps", logging_steps=logging_steps(params.eval_steps), logging_first_step=True,
        train_sampling_strategy="group_by_length",  # our sampler: lengths from duration_s
        dataloader_num_workers=params.dataloader_workers,
        dataloader_persistent_workers=params.dataloader_workers > 0,
        dataloader_pin_memory=gpu,
        remove_unused_columns=False,  # keep the collated audio batch as it is
        label_names=["labels"],
        report_to="none",  # the dvclive callback is added explicitly, with dvcyaml=False
        seed=seed, data_seed=seed,
    )
    # the effective batch is what convergence depends on: batch x accumulation x devices (processes x GPUs each)
    args.gradient_accumulation_steps = params.grad_accum_steps(args.world_size * max(args.n_gpu, 1), stage)
    return args


def train_ctc(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, train_utts: Sequence[Utterance],
              dev_utts: Sequence[Utterance], clips_dir: Path, params: TrainParams, stage: str, seed: int, out_dir: Path,
              reports_dir: Path, checkpoints_root: Path, run_key: str, regulariser: Regulariser | None = None,
              extra_callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune `model` with CTC on `train_utts`, keep the checkpoint with the best dev WER, write it with the
    processor to `out_dir` (safetensors, atomically) and return its scores.

    Curves go to `reports_dir` through dvclive (`plots/metrics/...`, `metrics.json`). Checkpoints go to
    `checkpoints_root/<stage>-<run_key[:16]>/`; when that folder holds a complete checkpoint, training
    resumes from the newest one. The folder is removed once the model is written. A step whose loss or gradient is
    not finite is skipped (see `_CTCTrainer._get_grad_norm`); more than `params.max_skipped_fraction` of the run's
    steps raise NonFiniteStepsError. `extra_callbacks` join the Trainer's (for instance to watch each step).
    """
    apply_training_config(model, params)
    run_dir = checkpoints_root / f"{stage}-{run_key[:16]}"
    resume = last_checkpoint(run_dir)
    if resume is not None:
        restore_curves(resume, reports_dir)
        log.info("%s: resuming from %s, with the curves as they were then", stage, resume)
    dev = UtteranceDataset(sorted(dev_utts, key=lambda u: -(u.duration_s or 0)), clips_dir, processor)  # less padding
    log.info("%s: %d train and %d dev utterances from %s; checkpoints in %s", stage, len(train_utts), len(dev), clips_dir,
             run_dir)
    live = Live(dir=str(reports_dir), resume=resume is not None, report=None, dvcyaml=False, save_dvc_exp=False)
    callbacks = [DVCLiveCurves(live=live, log_model=False), SkippedSteps(), *extra_callbacks]
    if params.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    trainer = _CTCTrainer(
        model=model, args=_training_arguments(params, stage, seed, run_dir), data_collator=CTCCollator(),
        train_dataset=UtteranceDataset(train_utts, clips_dir, processor), eval_dataset=dev, processing_class=processor,
        compute_metrics=dev_error_rates([u.text for u in dev.utterances], processor),
        preprocess_logits_for_metrics=_argmax, callbacks=callbacks, regulariser=regulariser,
        max_skipped_fraction=params.max_skipped_fraction,
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    state = trainer.state
    best = next(e for e in state.log_history if e.get("step") == state.best_global_step and "eval_wer" in e)
    result = TrainResult(best_dev_wer=best["eval_wer"], best_dev_cer=best["eval_cer"], best_step=state.best_global_step,
                         steps=state.global_step, skipped_steps=tuple(trainer._skipped_steps().steps),
                         resumed_from_step=checkpoint_step(resume) if resume is not None else None,
                         train_samples_per_second=output.metrics["train_samples_per_second"])
    live.summary["best"] = {"dev_wer": result.best_dev_wer, "dev_cer": result.best_dev_cer, "step": result.best_step}
    live.summary["skipped_steps"] = len(result.skipped_steps)
    live.make_summary()
    save_model(trainer.model, processor, out_dir)
    shutil.rmtree(run_dir)
    return result
