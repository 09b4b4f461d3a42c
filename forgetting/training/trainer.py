"""The CTC training core shared by pretrain and adapt: transformers' Trainer over lazily decoded clips
(`forgetting.training.batching`), with the regularisers' hook (`forgetting.training.regulariser`), dev WER/CER on one
or more languages, the rule that picks the checkpoint kept, dvclive curves (`forgetting.training.live`), and
checkpoints that only the same run resumes (`forgetting.training.resume`).

Knows nothing of DVC or of any method: the stage reads files and params and passes its regularisers, which the
Trainer subclass (`forgetting.training.ctc_trainer`) applies. Under torchrun the Trainer runs DistributedDataParallel;
process 0 alone writes the curves, the model and the timings.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from torch import nn
from torch.utils.data import ConcatDataset
from transformers import EarlyStoppingCallback, TrainerCallback, TrainingArguments, Wav2Vec2ForCTC, Wav2Vec2Processor

from forgetting.curves import DEV_AVERAGE_WER
from forgetting.io import write_json
from forgetting.schema import TrainParams
from forgetting.training.batching import CTCCollator, Split, UtteranceDataset
from forgetting.training.ctc_trainer import CTCTrainer
from forgetting.training.decoding import eval_batch_size
from forgetting.training.distributed import check_one_gpu_per_process
from forgetting.training.live import DVCLiveCurves, log_key, restore_curves
from forgetting.training.model import apply_training_config, save_model
from forgetting.training.regulariser import Regulariser
from forgetting.training.resume import checkpoint_step, last_checkpoint
from forgetting.training.step_guards import SkippedSteps

log = logging.getLogger(__name__)

LOGGING_STEPS = 10  # at most this many optimiser steps between training-loss log lines (and dvclive points)
KEEP_RULES = ("last", "best_target_dev", "best_average_dev")
TIMINGS_FILE = "timings.json"  # beside a stage's metrics.json: run times and throughput, not results


@dataclass(frozen=True)
class TrainResult:
    """The kept checkpoint (by the keep rule), its dev scores per language, and how the run went."""

    keep: str  # the rule that chose the kept step: one of KEEP_RULES
    kept_step: int
    dev: dict[str, dict[str, float]]  # dev language -> {"wer", "cer"} of the kept step
    steps: int  # optimiser steps taken in total, including those before a resume
    skipped_steps: tuple[int, ...]  # of them, those not applied (non-finite loss or gradient)
    resumed_from_step: int | None
    timings: dict[str, float]  # this process's run (evaluations included): runtime, samples and steps per second

    def describe(self) -> str:
        """`800 steps, resumed at step 100; kept step 700 (best_target_dev): dev de WER 0.412 CER 0.121, nl ...`."""
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step is not None else ""
        scores = ", ".join(f"{lang} WER {r['wer']:.3f} CER {r['cer']:.3f}" for lang, r in self.dev.items())
        return f"{self.steps} steps{resumed}; kept step {self.kept_step} ({self.keep}): dev {scores}"

    def metrics(self) -> dict[str, object]:
        """The run's results for the stage's metrics.json: the kept step and its dev scores, and the skipped steps (dvclive
        adds the last step)."""
        return {"kept": {"rule": self.keep, "step": self.kept_step, "dev": self.dev}, "skipped_steps": len(self.skipped_steps)}


def _argmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch, frames, vocab) logits -> (batch, frames) ids, so evaluation never accumulates full logits."""
    return logits.argmax(-1)


def logging_steps(eval_steps: int) -> int:
    """Optimiser steps between training-loss log lines: the largest divisor of `eval_steps` up to LOGGING_STEPS, so
    that every checkpoint falls on a log step. A logged loss is the mean since the previous log, and a resumed run
    starts that mean afresh at its checkpoint: only then does it log exactly the curve an uninterrupted run logs."""
    return max(d for d in range(1, LOGGING_STEPS + 1) if eval_steps % d == 0)


def _training_arguments(params: TrainParams, stage: str, run_dir: Path, model: Wav2Vec2ForCTC, keep: str,
                        first_dev: str) -> TrainingArguments:
    gpu = torch.cuda.is_available()
    if params.fp16 and not gpu:  # bf16 autocast runs on the CPU too; fp16's loss scaling is for GPUs
        log.warning("%s: fp16 requested but no GPU: training in float32 on the CPU", stage)
    args = TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=params.lr,
        warmup_steps=params.warmup_ratio,  # a float < 1 is a fraction of the total steps in transformers 5
        max_steps=params.max_steps if params.max_steps is not None else -1,
        num_train_epochs=params.epochs if params.epochs is not None else 1.0,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=eval_batch_size(model, params.batch_size),
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        fp16=params.fp16 and gpu,
        bf16=params.bf16,
        eval_strategy="steps", eval_steps=params.eval_steps,
        save_strategy="steps", save_steps=params.eval_steps, save_total_limit=params.save_total_limit,
        # the best checkpoint is tracked in every mode (early stopping needs it); it is kept unless keep is "last"
        load_best_model_at_end=keep != "last", greater_is_better=False,
        metric_for_best_model=log_key(DEV_AVERAGE_WER) if keep == "best_average_dev" else f"eval_{first_dev}_wer",
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter survives a resume
        logging_strategy="steps", logging_steps=logging_steps(params.eval_steps), logging_first_step=True,
        train_sampling_strategy="group_by_length",  # our sampler: lengths from duration_s
        dataloader_num_workers=params.dataloader_workers,
        dataloader_persistent_workers=params.dataloader_workers > 0,
        dataloader_pin_memory=gpu,
        remove_unused_columns=False,  # keep the collated audio batch as it is
        label_names=["labels"],
        report_to="none",  # the dvclive callback is added explicitly, with dvcyaml=False
        seed=params.seed, data_seed=params.seed,
        # LayerDrop skips layers, and the mask embedding (there when either masking is on) is used only when time
        # masking masks: under DistributedDataParallel such parameters may get no gradient in a step, as DDP must know
        ddp_find_unused_parameters=params.layerdrop > 0 or params.mask_time_prob > 0 or params.mask_feature_prob > 0,
        # Under torchrun without a GPU, accelerate sets up DistributedDataParallel (gloo) only when told to use the
        # CPU: otherwise every process trains alone on the whole batch and writes the outputs as process 0
        use_cpu=not gpu,
    )
    check_one_gpu_per_process(args.n_gpu)
    # the effective batch is what convergence depends on: batch x accumulation x processes (one device each)
    args.gradient_accumulation_steps = params.grad_accum_steps(args.world_size, stage)
    return args


def train_ctc(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, train: Split, dev: Mapping[str, Split],
              params: TrainParams, stage: str, out_dir: Path, reports_dir: Path, checkpoints_root: Path, run_key: str, *,
              keep: str = "best_target_dev", regularisers: Sequence[Regulariser] = (), replay: Split | None = None,
              replay_fraction: float = 0.0, export: Callable[[nn.Module], nn.Module] | None = None,
              extra_callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune `model` with CTC on `train`, evaluate WER/CER on each `dev` language every `params.eval_steps`, keep
    the checkpoint the rule `keep` picks, write it with the processor to `out_dir` (safetensors, atomically) and
    return its scores.

    `keep`: "last" (the final step), "best_target_dev" (the lowest WER on the first dev language: the stage's own),
    "best_average_dev" (the lowest mean WER over the dev languages). `replay`: utterances of another language, which
    make up `replay_fraction` of every batch (the batch size stays `params.batch_size`). `export` turns the kept model
    into the one written (LoRA folds its adapters back into the weights). Seeded by `params.seed`.
    Curves go to `reports_dir` through dvclive (`plots/metrics/...`), the results to its `metrics.json`, run times to
    `timings.json`. Checkpoints go to `checkpoints_root/<stage>-<run_key[:16]>/`; when that folder holds a complete
    checkpoint, training resumes from the newest one. The folder is removed once the model is written. A step whose
    loss or gradient is not finite is skipped (see `CTCTrainer._get_grad_norm`); more than
    `params.max_skipped_fraction` of the run's steps raise NonFiniteStepsError. `extra_callbacks` join the Trainer's.
    """
    if keep not in KEEP_RULES:
        raise ValueError(f"keep must be one of {KEEP_RULES}, got {keep!r}")
    apply_training_config(model, params)
    run_dir = checkpoints_root / f"{stage}-{run_key[:16]}"
    args = _training_arguments(params, stage, run_dir, model, keep, next(iter(dev)))
    main = args.process_index == 0
    resume = last_checkpoint(run_dir)
    if resume is not None and main:
        restore_curves(resume, reports_dir)
        log.info("%s: resuming from %s, with the curves as they were then", stage, resume)
    dev_sets = {lang: UtteranceDataset(sorted(split.utterances, key=lambda u: -(u.duration_s or 0)), split.clips, processor)
                for lang, split in dev.items()}  # longest first: less padding
    train_set = UtteranceDataset(train.utterances, train.clips, processor)
    if replay is not None:
        train_set = ConcatDataset([train_set, UtteranceDataset(replay.utterances, replay.clips, processor)])
    log.info("%s: %d train utterances from %s%s, dev %s; checkpoints in %s", stage, len(train.utterances), train.clips,
             f", {replay_fraction:g} of each batch replayed from {len(replay.utterances)}" if replay is not None else "",
             ", ".join(f"{lang} {len(d)}" for lang, d in dev_sets.items()), run_dir)
    live = Live(dir=str(reports_dir), resume=resume is not None, report=None, dvcyaml=False, save_dvc_exp=False) if main else None
    callbacks = [DVCLiveCurves(live=live, log_model=False), SkippedSteps(), *extra_callbacks]
    if params.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=params.early_stopping_patience))
    trainer = CTCTrainer(
        model=model, args=args, data_collator=CTCCollator(), train_dataset=train_set, eval_dataset=dev_sets,
        processing_class=processor, dev_references={lang: [u.text for u in d.utterances] for lang, d in dev_sets.items()},
        preprocess_logits_for_metrics=_argmax, callbacks=callbacks, regularisers=regularisers,
        max_skipped_fraction=params.max_skipped_fraction, replay_fraction=replay_fraction,
    )
    output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    state = trainer.state
    kept = state.global_step if keep == "last" else state.best_global_step
    scores = {lang: next(e for e in state.log_history if e.get("step") == kept and f"eval_{lang}_wer" in e)
              for lang in dev_sets}
    result = TrainResult(keep=keep, kept_step=kept,
                         dev={lang: {rate: e[f"eval_{lang}_{rate}"] for rate in ("wer", "cer")} for lang, e in scores.items()},
                         steps=state.global_step, skipped_steps=tuple(trainer._skipped_steps().steps),
                         resumed_from_step=checkpoint_step(resume) if resume is not None else None,
                         timings={key.removeprefix("train_"): value for key, value in output.metrics.items()
                                  if "runtime" in key or "per_second" in key})
    trainer.accelerator.wait_for_everyone()  # every process has loaded the kept checkpoint before it is removed
    if main:
        last = {log_key(r.curve): e[log_key(r.curve)] for e in state.log_history for r in regularisers
                if log_key(r.curve) in e}  # each regulariser's last logged value (the penalty at the end)
        live.summary = {**result.metrics(), **({"train": last} if last else {})}
        live.make_summary()
        write_json(reports_dir / TIMINGS_FILE, result.timings)
        save_model(export(trainer.model) if export is not None else trainer.model, processor, out_dir)
        shutil.rmtree(run_dir)
    return result
