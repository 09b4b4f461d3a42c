"""The Trainer subclass under `forgetting.training.trainer.train_ctc`: transformers' Trainer with the regularisers' hooks
(`forgetting.training.regulariser`), CTC and regularisers logged apart, our samplers (length-grouped, replay), padded frames
blanked before decoding, dev WER/CER per dev language and their mean, and the step guards (`forgetting.training.step_guards`):
a non-finite step is skipped, an out-of-memory micro-batch is cut into pieces.

A regulariser's loss term is added to every micro-batch's CTC loss; its gradient-only part (the EWC penalty) is added
once per optimiser step, after the gradients are accumulated and reduced across processes, before clipping.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import jiwer
import torch
from accelerate.utils.memory import clear_device_cache
from torch.amp.grad_scaler import OptState
from torch.utils.data import ConcatDataset, Sampler, SequentialSampler
from transformers import EvalPrediction, Trainer

from forgetting.curves import DEV_AVERAGE_WER, TRAIN_CTC_LOSS
from forgetting.data.corpus import normalise_text
from forgetting.training.batching import LengthGroupedEpochSampler, ReplaySampler, batch_rows
from forgetting.training.decoding import blank_padding_frames, greedy_decode
from forgetting.training.live import log_key
from forgetting.training.regulariser import Regulariser
from forgetting.training.step_guards import OutOfMemoryError, SkippedSteps, check_loss_scale

log = logging.getLogger("forgetting.training.trainer")  # the training core's log: these are its messages


class CTCTrainer(Trainer):
    """Trainer with the regularisers' hooks, CTC and regularisers logged apart, our samplers, padded frames blanked,
    the mean dev WER over the dev languages, and the step guards (non-finite steps, out of memory)."""

    # The model's forward takes **kwargs, so transformers 5 would assume its loss is already scaled for
    # gradient accumulation; CTC "mean" is a per-batch mean, so the Trainer must divide it.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, dev_references: Mapping[str, Sequence[str]], regularisers: Sequence[Regulariser] = (),
                 max_skipped_fraction: float = 0.0, replay_fraction: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_metrics = self._dev_error_rates
        self.dev_references = {name: list(texts) for name, texts in dev_references.items()}
        self._dev_name = next(iter(self.dev_references))  # the dev language being evaluated
        self.regularisers = list(regularisers)
        self.max_skipped_fraction = max_skipped_fraction
        self.replay_fraction = replay_fraction
        # (CTC, each regulariser's loss term, finite micro-batches) summed since the last log
        self._loss_sums: torch.Tensor | None = None
        self._bad_loss: torch.Tensor | None = None  # any non-finite training loss since the last optimiser step
        self._step_paths: list[str] = []  # the clips of this optimiser step's micro-batches
        self._skip = False
        self._chunks = 1  # pieces each micro-batch is cut into: doubled at each out-of-memory
        self._share = 1.0  # the running piece's share of its micro-batch
        self._micro_batches_in_step = 0
        self._piece_size, self._piece_paths = 0, []  # the piece in its forward and backward pass
        self._touched = False  # whether this micro-batch has reached a backward pass (its gradient may be added)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        paths = inputs.pop("paths", [])
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            ctc = loss * self._share  # CTC "mean" averages over the batch: a piece counts by its share of the utterances
            unwrapped = self.accelerator.unwrap_model(model)
            terms = [r.loss(unwrapped, inputs, outputs.logits) for r in self.regularisers]
            terms = [torch.zeros((), device=loss.device) if t is None else t * self._share for t in terms]
            loss = ctc + sum(terms)
            # on the device, no sync per micro-batch: a non-finite loss is found at the optimiser step
            finite = torch.isfinite(loss.detach())
            self._bad_loss = ~finite if self._bad_loss is None else self._bad_loss | ~finite
            stats = torch.stack([ctc.detach().mean(), *(t.detach() for t in terms), finite * self._share]).float()
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
                if self.args.world_size > 1:  # a retry or a skip on one process would desynchronise the gradient reduction
                    raise OutOfMemoryError(f"out of memory at step {self.state.global_step + 1} on process "
                                           f"{self.args.process_index} of {self.args.world_size} with {self._piece_size} "
                                           "utterances in a forward pass: lower batch_size (keeping effective_batch_size) "
                                           "or validate.max_seconds; the run resumes from its last checkpoint") from err
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
        """The Trainer's step on each piece of the micro-batch; the sum of their (weighted) losses. Under
        DistributedDataParallel only the last piece's backward pass reduces the gradients across processes."""
        total, size = None, len(inputs["input_values"])
        bounds = [round(i * size / self._chunks) for i in range(self._chunks + 1)]
        pieces = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
        for i, (start, end) in enumerate(pieces):
            self._share = (end - start) / size
            self._piece_size, self._piece_paths = end - start, inputs.get("paths", [])[start:end]
            piece = inputs if end - start == size else batch_rows(inputs, start, end)
            with self.accelerator.no_sync(model) if i < len(pieces) - 1 else nullcontext():
                loss = super().training_step(model, piece, num_items_in_batch)
            total = loss if total is None else total + loss
        self._share = 1.0
        return total

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        step = optimizer.step

        def step_unless_skipped(*step_args, **step_kwargs):
            # Under fp16 the loss scaler calls a fused optimiser's step even on an overflow (for the fused kernel to skip
            # it), and accelerate then takes the step as applied and the Trainer steps the schedule: a step found
            # overflowed here, or skipped by us (`_skip_in_scaler` records it as an overflow), is reported skipped.
            found_inf = getattr(optimizer, "found_inf", None)  # set by the scaler for a fused optimiser's step
            if self._skip or (found_inf is not None and bool(found_inf.item())):
                self.optimizer._accelerate_step_called = False  # accelerate: step_was_skipped, the schedule stays
                return None
            return step(*step_args, **step_kwargs)

        optimizer.step = step_unless_skipped
        return optimizer

    def _skip_in_scaler(self, scaler: torch.amp.GradScaler) -> None:
        """Record this optimiser step as an overflow in the fp16 loss scaler's own state, as if it had found an inf:
        its `step` then leaves the weights and the optimiser state alone, accelerate marks the step skipped (so the
        Trainer does not step the learning-rate schedule), and accelerate's one `update` backs the scale off."""
        optimizer = self.optimizer.optimizer  # the torch optimiser inside accelerate's wrapper
        state = scaler._per_optimizer_states[id(optimizer)]
        if state["stage"] is OptState.READY:  # transformers 5.24 unscales in every case (its grad norm with max_norm
            scaler.unscale_(optimizer)  # inf when not clipping); should that change, a skip must still find its record
        for found_inf in state["found_inf_per_device"].values():
            found_inf.fill_(1.0)

    def _scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 loss scaler, when one runs."""
        scaler = getattr(self.accelerator, "scaler", None)
        return scaler if scaler is not None and scaler.is_enabled() else None

    def _add_regulariser_gradients(self, model) -> None:
        """The regularisers' once-per-step gradients, in the loss scale the accumulated gradients carry (fp16)."""
        scaler = self._scaler()
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        unwrapped = self.accelerator.unwrap_model(model)
        for regulariser in self.regularisers:
            regulariser.add_gradient(unwrapped, scale)

    def _clip_grad_norm(self, model):
        self._add_regulariser_gradients(model)  # before clipping, so the penalty is clipped with the rest
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        """The gradient norm, and the decision whether this optimiser step is applied: not when the loss of one of its
        micro-batches (CTC + regularisers) or the gradient (the penalty's included) is not finite, on any process. A
        skipped step leaves the weights, the optimiser state and the learning-rate schedule as they were, is counted
        and names its clips. In fp16 a non-finite gradient is the loss scaler's routine overflow: the scaler skips that
        step and lowers its scale itself, and it is not counted; a scale that collapses stops the run
        (`check_loss_scale`)."""
        if grad_norm is None:  # no clipping (max_grad_norm 0): the regularisers' gradients go in here
            self._add_regulariser_gradients(model)
        grad_norm = super()._get_grad_norm(model, grad_norm)
        scaler = self._scaler()
        bad = ~torch.isfinite(torch.as_tensor(grad_norm, device=self.args.device))
        if scaler is not None:
            bad = torch.zeros_like(bad)
        if self._bad_loss is not None:
            bad = bad | self._bad_loss.to(bad.device)
        # one host sync per optimiser step, as a GradScaler makes; every process takes the same decision
        self._skip = bool(self.accelerator.reduce(bad.int(), reduction="sum") > 0)
        self.optimizer._is_overflow = self._skip  # the AcceleratedOptimizer's flag: the scheduler does not step either
        if self._skip:
            if scaler is not None:
                self._skip_in_scaler(scaler)
            self._skipped_steps().record(self.state.global_step + 1, self._step_paths, self.max_skipped_fraction,
                                         self.state.max_steps)
        if scaler is not None:  # the scaler's own overflows are not counted, but they must not go on for ever
            check_loss_scale(scaler.get_scale(), self.state.global_step + 1, self._step_paths)
        self._bad_loss, self._step_paths, self._micro_batches_in_step = None, [], 0
        return grad_norm

    def _skipped_steps(self) -> SkippedSteps:
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, SkippedSteps))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_sums is not None:  # a training log line, not an evaluation
            sums = self.accelerator.reduce(self._loss_sums, reduction="sum")  # over all processes
            means = (sums[:-1] / sums[-1]).tolist()  # over the finite micro-batches since the last log
            logs = {**logs, log_key(TRAIN_CTC_LOSS): means[0]}
            unwrapped = self.accelerator.unwrap_model(self.model)
            for regulariser, term in zip(self.regularisers, means[1:], strict=True):
                value = regulariser.value(unwrapped)
                if value is None:  # its loss term, already part of the logged loss
                    logs[log_key(regulariser.curve)] = term
                else:  # a gradient-only term, at the weights of the logged step
                    logs[log_key(regulariser.curve)] = float(value)
                    logs["loss"] += float(value)
            self._loss_sums = None
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """As the Trainer evaluates, plus `eval_average_wer`, the mean WER over the dev languages, when it evaluates
        all of them (the periodic evaluation)."""
        if isinstance(eval_dataset, str):  # one of the dev languages, by its name
            self._dev_name = eval_dataset
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if eval_dataset is None and metric_key_prefix == "eval":
            average = statistics.fmean(metrics[f"eval_{lang}_wer"] for lang in self.eval_dataset)
            metrics[log_key(DEV_AVERAGE_WER)] = average
            self.log({log_key(DEV_AVERAGE_WER): average})
        return metrics

    def _dev_error_rates(self, prediction: EvalPrediction) -> dict[str, float]:
        """Corpus WER and CER (jiwer) of the greedy hypotheses, normalised by `normalise_text`, against the normalised
        references of the dev language being evaluated (in its dataset's order)."""
        references = self.dev_references[self._dev_name]
        hypotheses = [normalise_text(h) for h in greedy_decode(prediction.predictions, self.processing_class.tokenizer)]
        return {"wer": jiwer.wer(references, hypotheses), "cer": jiwer.cer(references, hypotheses)}

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, ConcatDataset):  # the target utterances, then the source utterances replayed
            target, replay = dataset.datasets
            batch = self.args.train_batch_size
            return ReplaySampler(target.lengths, len(replay), batch, round(self.replay_fraction * batch), self.args.data_seed)
        # mega-batches of the global batch (all processes, all micro-batches of a step): each process then takes its
        # blocks of the same order, and N processes x batch b train on what 1 process x batch N·b would
        per_step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedEpochSampler(dataset.lengths, per_step, self.args.data_seed)

    def _get_eval_sampler(self, eval_dataset) -> Sampler:
        return SequentialSampler(eval_dataset)  # in dataset order: compute_metrics pairs predictions with its texts

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("paths", None)
        with float32_forward(self.accelerator.unwrap_model(model)):
            loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if logits is not None:
            logits = blank_padding_frames(self.accelerator.unwrap_model(model), logits, inputs["attention_mask"])
        return loss, logits, labels


@contextmanager
def float32_forward(model: torch.nn.Module) -> Iterator[None]:
    """The model's own forward, without the autocast that accelerate wraps it in under fp16/bf16, for the span of the
    block: dev WER/CER during training is scored in float32, as the average and eval stages score, so the kept
    checkpoint's `kept.dev` is what `average` gives at α = 1 on any device."""
    original = model.__dict__.get("_original_forward")  # set by accelerate when it wraps the forward in autocast
    if original is None:
        yield
        return
    wrapped = model.forward
    model.forward = original
    try:
        yield
    finally:
        model.forward = wrapped
