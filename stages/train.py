"""The CTC training core shared by pretrain and adapt: transformers' Trainer over lazily decoded clips, with a
regulariser hook, dev WER/CER, dvclive curves, and checkpoints that only the same run resumes.

Knows nothing of DVC or of EWC: the stage reads files and params, and passes a `regulariser(model) -> scalar`
when it has one. Loss bookkeeping: the Trainer divides each micro-batch loss (CTC + penalty) by the
gradient accumulation steps, so a penalty added to every micro-batch counts once per optimiser step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch
import transformers
from dvclive import Live
from dvclive.utils import standardize_metric_name
from torch.utils.data import Dataset, Sampler, SequentialSampler
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainingArguments, Wav2Vec2ForCTC, Wav2Vec2Processor
from transformers.integrations import DVCLiveCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from stages.audio import TARGET_SR, load_clip_16k, safe_clip_path
from stages.corpus import WORD_DELIMITER, Utterance, normalise_text
from stages.model import apply_training_config, blank_padding_frames, greedy_decode, save_model
from stages.params import TrainParams

log = logging.getLogger(__name__)

Regulariser = Callable[[torch.nn.Module], torch.Tensor]
LOGGING_STEPS = 10  # optimiser steps between training-loss log lines (and dvclive points)
LABEL_PAD = -100  # ignored by the CTC loss


class TrainDataError(ValueError):
    """Training data the core cannot use; the message names the row."""


@dataclass(frozen=True)
class TrainResult:
    """The kept (best dev WER) model's dev scores, and how the run went."""

    best_dev_wer: float
    best_dev_cer: float
    best_step: int
    steps: int  # optimiser steps taken in total, including those before a resume
    resumed_from_step: int | None
    train_samples_per_second: float  # of this process's run, evaluations included


class UtteranceDataset(Dataset):
    """Utterances whose clips are decoded only when an item is read (in DataLoader workers).

    An item is `{"input_values": float32 (samples,), "labels": list[int]}`: the 16 kHz clip normalised per
    utterance by the processor's feature extractor (zero mean, unit variance), and the tokenizer ids of the
    normalised text, spaces as `|`. `lengths` (samples) come from the `duration_s` column, so length
    grouping decodes nothing.
    """

    def __init__(self, utterances: Sequence[Utterance], clips_dir: Path, processor: Wav2Vec2Processor):
        for u in utterances:
            if u.duration_s is None:
                raise TrainDataError(f"line {u.line} ({u.path}): no duration_s; train on the validated splits")
        self.utterances = list(utterances)
        self.lengths = [round(u.duration_s * TARGET_SR) for u in self.utterances]
        self.clips_dir = clips_dir
        self.processor = processor

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, np.ndarray | list[int]]:
        u = self.utterances[index]
        audio = load_clip_16k(safe_clip_path(self.clips_dir, u.path))
        input_values = self.processor.feature_extractor(audio, sampling_rate=TARGET_SR)["input_values"][0]
        labels = self.processor.tokenizer(u.text.replace(" ", WORD_DELIMITER))["input_ids"]
        return {"input_values": input_values, "labels": labels}


@dataclass(frozen=True)
class CTCCollator:
    """Pads a list of `UtteranceDataset` items: audio with `padding_value` into `input_values` (batch, samples)
    plus `attention_mask` (batch, samples; 1 = real sample), labels with -100 into `labels` (batch, tokens)."""

    padding_value: float = 0.0

    def __call__(self, items: Sequence[Mapping[str, np.ndarray | list[int]]]) -> dict[str, torch.Tensor]:
        samples = max(len(item["input_values"]) for item in items)
        tokens = max(len(item["labels"]) for item in items)
        input_values = torch.full((len(items), samples), self.padding_value, dtype=torch.float32)
        attention_mask = torch.zeros((len(items), samples), dtype=torch.long)
        labels = torch.full((len(items), tokens), LABEL_PAD, dtype=torch.long)
        for row, item in enumerate(items):
            audio, ids = item["input_values"], item["labels"]
            input_values[row, : len(audio)] = torch.from_numpy(np.asarray(audio, dtype=np.float32))
            attention_mask[row, : len(audio)] = 1
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"input_values": input_values, "attention_mask": attention_mask, "labels": labels}


class LengthGroupedEpochSampler(Sampler[int]):
    """transformers' length grouping (shuffled mega-batches, each sorted by length) from precomputed lengths,
    reshuffled from `seed + epoch`: the order of an epoch never depends on the RNG state, so a resumed run
    skips exactly the batches it had seen."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class _CTCTrainer(Trainer):
    """Trainer with the regulariser hook, CTC and penalty logged apart, our samplers, and padded frames blanked."""

    # The model's forward takes **kwargs, so transformers 5 would assume its loss is already scaled for
    # gradient accumulation; CTC "mean" is a per-batch mean, so the Trainer must divide it.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, regulariser: Regulariser | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.regulariser = regulariser
        self._loss_sums: torch.Tensor | None = None  # (CTC, penalty) summed over micro-batches since the last log
        self._micro_batches = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        if model.training:
            unwrapped = self.accelerator.unwrap_model(model)
            penalty = self.regulariser(unwrapped) if self.regulariser is not None else torch.zeros((), device=loss.device)
            sums = torch.stack([loss.detach().mean(), penalty.detach()]).float()  # on the device: no sync per batch
            self._loss_sums = sums if self._loss_sums is None else self._loss_sums + sums
            self._micro_batches += 1
            loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._micro_batches:  # a training log line, not an evaluation
            ctc, penalty = (self._loss_sums / self._micro_batches).tolist()
            logs = {**logs, "train_ctc_loss": ctc, **({"train_penalty": penalty} if self.regulariser is not None else {})}
            self._loss_sums, self._micro_batches = None, 0
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


def _live_metric(key: str) -> tuple[str, bool]:
    """The dvclive name of a Trainer log key (`train/...`, `eval/...`) and whether it gets a curve: timings,
    totals and the epoch go to metrics.json only, not to plots of one point or of no interest."""
    if key == "train_loss":  # the end-of-run mean, not the curve of `loss`
        key = "train_mean_loss"
    elif not key.startswith(("train_", "eval_")) and key not in ("epoch", "total_flos"):
        key = f"train_{key}"  # loss, grad_norm, learning_rate
    plot = not any(word in key for word in ("runtime", "per_second", "flos", "epoch", "mean_loss"))
    return standardize_metric_name(key, "dvclive.huggingface"), plot


class _DVCLiveCurves(DVCLiveCallback):
    """dvclive points at the optimiser step (the stock callback counts log calls, which evaluations add to),
    with the names and plots of `_live_metric`."""

    def setup(self, args, state, model):
        # no Live.log_params: the run's params are params.yaml's, tracked by DVC; a dump of TrainingArguments
        # would be a stray, undeclared file holding the checkpoint path
        self._initialized = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self.live.step = state.global_step
        for key, value in logs.items():
            name, plot = _live_metric(key)
            self.live.log_metric(name, value, plot=plot)
        self.live.next_step()


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_key(config: Mapping[str, object], files: Sequence[Path]) -> str:
    """sha256 over everything that defines a run: `config` (params sections, seed; JSON), the contents of
    `files` (inputs, start weights, code) in order, and the torch and transformers versions."""
    digest = hashlib.sha256(json.dumps([config, torch.__version__, transformers.__version__], sort_keys=True).encode())
    for path in files:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def core_code_files() -> list[Path]:
    """Source files of the modules a training run executes, for the run key (a stage adds its own file)."""
    names = ("stages.audio", "stages.corpus", "stages.model", "stages.params", __name__)
    return [Path(sys.modules[name].__file__) for name in names]


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step of a Trainer checkpoint folder `checkpoint-<step>`, or None for any other name."""
    step = checkpoint.name.removeprefix("checkpoint-")
    return int(step) if step.isdigit() and step != checkpoint.name else None


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` in `run_dir` (trainer_state.json is written last), or None."""
    done = [p for p in run_dir.glob("checkpoint-*") if checkpoint_step(p) is not None and (p / "trainer_state.json").is_file()]
    return max(done, key=checkpoint_step, default=None)


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
        logging_strategy="steps", logging_steps=min(LOGGING_STEPS, params.eval_steps), logging_first_step=True,
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
              reports_dir: Path, checkpoints_root: Path, run_key: str, regulariser: Regulariser | None = None) -> TrainResult:
    """Fine-tune `model` with CTC on `train_utts`, keep the checkpoint with the best dev WER, write it with the
    processor to `out_dir` (safetensors, atomically) and return its scores.

    Curves go to `reports_dir` through dvclive (`plots/metrics/...`, `metrics.json`). Checkpoints go to
    `checkpoints_root/<stage>-<run_key[:16]>/`; when that folder holds a complete checkpoint, training
    resumes from the newest one. The folder is removed once the model is written.
    """
    apply_training_config(model, params)
    run_dir = checkpoints_root / f"{stage}-{run_key[:16]}"
    resume = last_checkpoint(run_dir)
    if resume is not None:
        log.info("%s: resuming from %s", stage, resume)
    dev = UtteranceDataset(sorted(dev_utts, key=lambda u: -(u.duration_s or 0)), clips_dir, processor)  # less padding
    log.info("%s: %d train and %d dev utterances from %s; checkpoints in %s", stage, len(train_utts), len(dev), clips_dir,
             run_dir)
    live = Live(dir=str(reports_dir), resume=resume is not None, report=None, dvcyaml=False, save_dvc_exp=False)
    callbacks = [_DVCLiveCurves(live=live, log_model=False)]
    if params.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    trainer = _CTCTrainer(
        model=model, args=_training_arguments(params, stage, seed, run_dir), data_collator=CTCCollator(),
        train_dataset=UtteranceDataset(train_utts, clips_dir, processor), eval_dataset=dev, processing_class=processor,
        compute_metrics=dev_error_rates([u.text for u in dev.utterances], processor),
        preprocess_logits_for_metrics=_argmax, callbacks=callbacks, regulariser=regulariser,
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    state = trainer.state
    best = next(e for e in state.log_history if e.get("step") == state.best_global_step and "eval_wer" in e)
    result = TrainResult(best_dev_wer=best["eval_wer"], best_dev_cer=best["eval_cer"], best_step=state.best_global_step,
                         steps=state.global_step, resumed_from_step=checkpoint_step(resume) if resume is not None else None,
                         train_samples_per_second=output.metrics["train_samples_per_second"])
    live.summary["best"] = {"dev_wer": result.best_dev_wer, "dev_cer": result.best_dev_cer, "step": result.best_step}
    live.make_summary()
    save_model(trainer.model, processor, out_dir)
    shutil.rmtree(run_dir)
    return result
