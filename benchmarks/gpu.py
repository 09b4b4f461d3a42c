"""The real study's training core on a GPU: XLS-R 300M's architecture (random weights) trained through `train_ctc` as
the adapt stage trains it, on synthetic clips with Common Voice's length distribution. One prepared script: at most
6 minutes on one H100, one JSON.

    python -m benchmarks.gpu [--device cuda] [--out reports/bench/gpu.json]   # the full run
    python -m benchmarks.gpu --smoke --out /tmp/gpu.json                      # a tiny model, CPU, under a minute

Model: `build_model` (the project's) from a local config with XLS-R 300M's architecture (`XLSR_300M`, no download;
`--smoke`: `SMOKE_CONFIG`), vocabulary of the preset's German alphabet, feature encoder frozen. Training settings: the
`adapt` section of `presets/thesis-cv-xlsr.yaml` (dropout, LayerDrop, masking, lr, clipping, loader workers, λ), with
each configuration's batch size and precision, `max_steps` = warm-up + timed steps, `keep: last`; the one evaluation
(4 dev clips) and one checkpoint that end every `train_ctc` run fall after the timed window.

Clips: noise, MP3 at 48 kHz mono like Common Voice's (decoded and resampled by the project's loader); durations
lognormal with median 4.5 s and σ 0.35 (of the log), clipped to [2, 10] s (Common Voice's validated clips are mostly
3-7 s; the preset drops clips over 10 s); transcripts random words over the preset's German alphabet, 15 characters a
second. 640 training clips (smoke: 48): the length-grouped sampler then sorts mega-batches of 160 clips (10 steps),
so the warm-up takes the first and the timed steps the next two, of every length, as a long run's steps are.

Configurations (CONFIGS, 13): bf16 and fp16 × EWC on and off × physical batch 4, 8, 16 at effective batch 16
(accumulation 4, 2, 1), SDPA attention; and bf16 + EWC at batch 8 with eager attention. Each runs 10 warm-up and 20
timed optimiser steps (smoke: 1 and 2) of the project's step: `CTCTrainer` with the length-grouped sampler, the CTC
collator and, with EWC, `EWCPenalty` (random Fisher, the preset's λ), its gradient added once per optimiser step. A
callback marks the steps. An out-of-memory, raised or absorbed by the core (which then cuts micro-batches into
pieces), is recorded as "oom": true and the next configuration runs.

Measured (field by field in docs/gpu.md, "The GPU benchmark"):
- training throughput: seconds of real (unpadded) audio per wall second of the timed steps, which on one GPU is audio
  hours per GPU hour; MFU: analytic training FLOPs of that audio (6 · trainable parameters · frames + 12 · layers ·
  hidden · frames² for attention, plus 2 · MACs of the frozen CNN's forward) over the device's peak dense bf16/fp16
  FLOPs (PEAK_FLOPS; null when the device is not in the table);
- peak memory: torch.cuda.max_memory_allocated from the start of training to the last timed step (the first batch
  holds the longest clip), and which batch sizes fit the preset's table of GPU memory sizes with 10 % headroom;
- the padding fraction of the sampler's batches (padded frames / all frames), timed steps and whole epoch;
- the loader: the main loop's time waiting for the next batches in the timed window, and the DataLoader alone;
- the Fisher (`estimate_fisher`), looped (batch 1) and batched, on pre-decoded utterances, against training;
- eval: `transcribe` (the eval stage's path, clips decoded in the main process) and its model part alone, float32.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import io
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import soundfile as sf
import torch
import transformers
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from transformers import TrainerCallback, Wav2Vec2Config, Wav2Vec2ForCTC

from forgetting.data.audio import TARGET_SR, load_clip_16k
from forgetting.data.corpus import Utterance, build_vocab
from forgetting.io import write_json
from forgetting.methods.fisher import choose_utterances, estimate_fisher
from forgetting.methods.penalty import EWCPenalty
from forgetting.params import load_params
from forgetting.schema import AdaptParams, Params
from forgetting.training.batching import CTCCollator, Split, UtteranceDataset
from forgetting.training.decoding import blank_padding_frames, transcribe
from forgetting.training.model import TINY as TINY_MODEL
from forgetting.training.model import apply_training_config, build_model, build_processor
from forgetting.training.step_guards import OutOfMemoryError
from forgetting.training.trainer import train_ctc

PRESET = Path("presets/thesis-cv-xlsr.yaml")
XLSR_300M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                 conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=True,
                 feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
                 num_conv_pos_embedding_groups=16)
SMOKE_CONFIG = {**XLSR_300M, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}

DTYPES, BATCH_SIZES, EFFECTIVE_BATCH = ("bf16", "fp16"), (4, 8, 16), 16
CONFIGS = [(dtype, ewc, batch, "sdpa") for dtype in DTYPES for ewc in (True, False) for batch in BATCH_SIZES] + \
          [("bf16", True, 8, "eager")]  # (precision, EWC, physical batch, attention implementation)
FULL = dict(warmup_steps=10, timed_steps=20, train_clips=640, dev_clips=4, fisher_utterances=32, fisher_batch_size=8,
            eval_clips=256, loader_batches=40)
SMOKE = dict(warmup_steps=1, timed_steps=2, train_clips=48, dev_clips=2, fisher_utterances=4, fisher_batch_size=2,
             eval_clips=8, loader_batches=2)
CLIP_SR = 48_000  # Common Voice's MP3s
MEDIAN_S, SIGMA, MIN_S, MAX_S, CHARS_PER_S = 4.5, 0.35, 2.0, 10.0, 15.0
PREFETCH_FACTOR = 2  # batches each loader worker prepares ahead (torch's default)
HEADROOM = 1.10  # a batch size fits a GPU when 1.1 × its peak allocated memory is at most the GPU's GiB
SHM_MIN_FREE = 16 * 2**30  # checkpoints go to /dev/shm when it has this much room: no disk in the timings' way

# Peak dense tensor-core FLOP/s (no sparsity) by precision; the first row whose words all occur in the device name.
PEAK_FLOPS = [
    (("H200", "NVL"), {"bf16": 835e12, "fp16": 835e12}),
    (("H200",), {"bf16": 989e12, "fp16": 989e12}),
    (("H100", "NVL"), {"bf16": 835e12, "fp16": 835e12}),
    (("H100", "PCIe"), {"bf16": 756e12, "fp16": 756e12}),
    (("H100",), {"bf16": 989e12, "fp16": 989e12}),  # SXM (HBM3)
    (("A100",), {"bf16": 312e12, "fp16": 312e12}),
    (("L40S",), {"bf16": 362e12, "fp16": 362e12}),
    (("V100", "PCIe"), {"bf16": None, "fp16": 112e12}),  # no bf16 tensor cores
    (("V100",), {"bf16": None, "fp16": 125e12}),
]
# The targets (README, "Performance"): bf16 XLS-R 300M with EWC at >= 1,000 audio-hours per H100-hour, EWC's
# step at most 1.01x the plain one, the batched Fisher at >= 0.8x training's audio throughput, <= 10 % padded frames;
# and the run itself within 6 minutes, the loader's waits within 5 % of the timed window.
TARGETS = {"full_run_wall_s_max": 360, "bf16_ewc_audio_hours_per_h100_hour_min": 1000,
           "ewc_over_plain_step_time_max": 1.01, "fisher_over_train_audio_throughput_min": 0.8,
           "padding_fraction_max": 0.10, "loader_wait_fraction_max": 0.05}

# The JSON's fields, the same for the full run and the smoke run (tests/unit/test_bench_gpu.py holds the JSON to them).
REPORT_FIELDS = ("device", "device_total_memory_bytes", "peak_flops", "torch", "cuda", "cudnn", "transformers",
                 "accelerate", "python", "cpus", "commit", "load_average_1min_at_start", "smoke", "settings", "model", "configs",
                 "comparisons", "batch_size_table", "fisher", "eval", "loader", "targets", "pass", "null_fields_why",
                 "failed_configs", "wall_s")
CONFIG_FIELDS = ("name", "dtype", "ewc", "batch_size", "gradient_accumulation", "effective_batch_size",
                 "attn_implementation", "attn_implementation_used", "precision_used", "core_warnings", "oom", "error",
                 "warmup_steps", "timed_steps", "timed_utterances", "timed_audio_s", "timed_mean_clip_s", "timed_wall_s",
                 "audio_hours_per_gpu_hour", "utterances_per_s", "step_s_mean", "loader_wait_s", "loader_wait_fraction",
                 "audio_hours_per_gpu_hour_without_loader_wait", "padding_fraction", "epoch_padding_fraction",
                 "model_flops_per_audio_s", "mfu", "peak_memory_allocated_bytes", "peak_memory_reserved_bytes",
                 "memory_allocated_before_bytes", "after_timed_s", "wall_s")
SECTION_FIELDS = {
    "fisher": ("utterances", "audio_s", "batch_size", "looped_s", "batched_s", "looped_utterances_per_s",
               "batched_utterances_per_s", "looped_audio_s_per_s", "batched_audio_s_per_s", "batched_over_looped",
               "best_path", "train_audio_s_per_s", "fisher_over_train_audio_throughput", "looped_peak_memory_bytes",
               "batched_peak_memory_bytes", "oom", "error"),
    "eval": ("utterances", "audio_s", "batch_size", "transcribe_s", "audio_hours_per_gpu_hour",
             "model_only_s", "model_only_audio_hours_per_gpu_hour", "oom", "error"),
    "loader": ("workers", "batch_size", "batches", "audio_s", "audio_s_per_s", "best_train_audio_s_per_s",
               "loader_over_best_training", "max_loader_wait_fraction", "keeps_up", "error"),
}


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The synthetic clips: training, dev (the evaluation `train_ctc` ends with) and eval utterances, one clips folder."""

    train: Split
    dev: Split
    eval: Split


def clip_durations_s(count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` durations (s) from Common Voice's length distribution as modelled here (see the module docstring)."""
    return np.clip(rng.lognormal(np.log(MEDIAN_S), SIGMA, count), MIN_S, MAX_S)


def transcript(duration_s: float, alphabet: str, rng: np.random.Generator) -> str:
    """Random words over `alphabet`, CHARS_PER_S characters a second, about one in six a space."""
    chars = rng.choice(list(alphabet), size=max(2, round(CHARS_PER_S * duration_s)))
    chars[rng.random(len(chars)) < 1 / 6] = " "
    return " ".join("".join(chars).split()) or alphabet[0]


def write_clip(job: tuple[Path, float, int]) -> int:
    """Write seeded noise of the given duration (s) as a 48 kHz MP3; its length in samples once decoded at 16 kHz."""
    path, duration_s, seed = job
    audio = 0.1 * np.random.default_rng(seed).standard_normal(round(duration_s * CLIP_SR)).astype(np.float32)
    sf.write(path, audio, CLIP_SR, format="MP3", subtype="MPEG_LAYER_III")
    return len(load_clip_16k(path))


def write_corpus(root: Path, counts: dict[str, int], alphabet: str, seed: int, processes: int) -> Corpus:
    """The clips of every split in `root/clips`, each utterance's duration_s its decoded length (what the sampler and
    the collator then agree on)."""
    rng = np.random.default_rng(seed)
    clips = root / "clips"
    clips.mkdir(parents=True)
    total = sum(counts.values())
    durations = clip_durations_s(total, rng)
    jobs = [(clips / f"bench_{i:05d}.mp3", float(d), seed * 1_000_003 + i) for i, d in enumerate(durations)]
    if processes > 1:
        with ProcessPoolExecutor(processes) as pool:
            samples = list(pool.map(write_clip, jobs, chunksize=16))
    else:
        samples = [write_clip(job) for job in jobs]
    utterances = []
    for i, ((path, duration_s, _), n) in enumerate(zip(jobs, samples, strict=True)):
        text = transcript(duration_s, alphabet, rng)
        utterances.append(Utterance(client_id=f"speaker{i % 50}", path=path.name, sentence=text, text=text,
                                    line=i + 2, duration_s=n / TARGET_SR))
    splits, start = {}, 0
    for name, count in counts.items():
        splits[name] = Split(utterances[start:start + count], clips)
        start += count
    return Corpus(**splits)


def conv_lengths(config: Wav2Vec2Config, samples: int) -> list[int]:
    """The output length of each feature-encoder convolution for `samples` input samples (no padding, as wav2vec2)."""
    lengths = []
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        samples = (samples - kernel) // stride + 1
        lengths.append(samples)
    return lengths


def training_flops(config: Wav2Vec2Config, trainable: int, samples: int) -> float:
    """Training FLOPs of one utterance of `samples` 16 kHz samples, no padding: forward and backward of the
    transformer part (6 · trainable parameters · frames, plus 12 · layers · hidden · frames² for the attention
    scores and their weighted sum) and the forward of the frozen CNN (2 · its MACs; it gets no backward)."""
    lengths = conv_lengths(config, samples)
    channels = [1, *config.conv_dim]
    cnn_macs = sum(channels[i] * channels[i + 1] * k * n for i, (k, n) in enumerate(zip(config.conv_kernel, lengths,
                                                                                            strict=True)))
    frames = lengths[-1]
    return 2 * cnn_macs + 6 * trainable * frames + 12 * config.num_hidden_layers * config.hidden_size * frames**2


def peak_flops(device_name: str) -> dict[str, float | None] | None:
    """The device's peak dense FLOP/s per precision from PEAK_FLOPS, or None when it is not there (a CPU)."""
    return next((peaks for words, peaks in PEAK_FLOPS if all(w in device_name for w in words)), None)


def preset_batch_table(preset: Path) -> dict[int, int]:
    """GPU memory (GB) -> physical batch size, from the table in the preset's comments ("24 GB: 4 (x4)")."""
    table = {int(gb): int(batch) for gb, batch in re.findall(r"(\d+) GB: (?:batch_size )?(\d+) \(x\d+",
                                                             preset.read_text(encoding="utf-8"))}
    if not table:
        raise ValueError(f"{preset}: no table of batch sizes per GPU memory ('<N> GB: <batch> (x<accumulation>)') found")
    return table


class StepMarks(TrainerCallback):
    """Wall-clock marks of a `train_ctc` run's optimiser steps (begin, end, log; 1-based steps), what the run used
    (precision, accumulation, attention, the sampler's batches as index lists, lengths in samples), and the peak CUDA
    memory from the start of training to the end of step `last`. The device is synchronised only at the ends of steps
    `first - 1` and `last`, the timed window's edges, so the steps run as they do unobserved."""

    def __init__(self, first: int, last: int, device: torch.device) -> None:
        self.first, self.last, self.device = first, last, device
        self.begin: dict[int, float] = {}
        self.end: dict[int, float] = {}
        self.logged: dict[int, float] = {}
        self.batches: list[list[int]] = []
        self.lengths: list[int] = []
        self.precision = self.attention = ""
        self.accumulation = 0
        self.peak_allocated = self.peak_reserved = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.precision = "fp16" if args.fp16 else "bf16" if args.bf16 else "float32"
        self.accumulation = args.gradient_accumulation_steps
        self.attention = model.config._attn_implementation
        self.batches = [list(batch) for batch in train_dataloader.batch_sampler]  # epoch 0, as the loop will draw it
        self.lengths = list(train_dataloader.dataset.lengths)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin[state.global_step + 1] = time.perf_counter()  # its micro-batches are loaded by now

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.first - 1, self.last):
            synchronize(self.device)
        self.end[state.global_step] = time.perf_counter()
        if state.global_step == self.last and self.device.type == "cuda":
            self.peak_allocated = torch.cuda.max_memory_allocated(self.device)
            self.peak_reserved = torch.cuda.max_memory_reserved(self.device)

    def on_log(self, args, state, control, **kwargs):
        self.logged[state.global_step] = time.perf_counter()


class Captured(logging.Handler):
    """The training core's warnings during one configuration (fp16 ignored on the CPU, out of memory, ...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def padding_fraction(batches: Sequence[Sequence[int]], frames: Sequence[int]) -> float:
    """Padded frames over all frames of `batches` (index lists into `frames`), each padded to its longest."""
    padded = sum(len(b) * max(frames[i] for i in b) for b in batches)
    return 1 - sum(frames[i] for b in batches for i in b) / padded


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def release_memory(device: torch.device) -> None:
    """Free what a finished configuration left (the Trainer and its workers are collected, then CUDA's cache)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, OutOfMemoryError))


def run_config(cfg: tuple[str, bool, int, str], base: Wav2Vec2ForCTC, fisher: dict[str, torch.Tensor], processor,
               corpus: Corpus, adapt: AdaptParams, settings: dict, peaks: dict | None, device: torch.device,
               work: Path) -> dict[str, Any]:
    """Train one configuration through `train_ctc` and measure it; every CONFIG_FIELDS key, None where not measured."""
    dtype, ewc, batch, attention = cfg
    name = f"{dtype}-{'ewc' if ewc else 'plain'}-b{batch}-{attention}"
    warmup, timed = settings["warmup_steps"], settings["timed_steps"]
    result: dict[str, Any] = dict.fromkeys(CONFIG_FIELDS)
    result.update(name=name, dtype=dtype, ewc=ewc, batch_size=batch, effective_batch_size=EFFECTIVE_BATCH,
                  gradient_accumulation=EFFECTIVE_BATCH // batch, attn_implementation=attention, oom=False,
                  warmup_steps=warmup, timed_steps=timed,
                  memory_allocated_before_bytes=torch.cuda.memory_allocated(device) if device.type == "cuda" else None)
    params = dataclasses.replace(adapt, batch_size=batch, effective_batch_size=EFFECTIVE_BATCH, fp16=dtype == "fp16",
                                 bf16=dtype == "bf16", max_steps=warmup + timed, epochs=None, eval_steps=warmup + timed,
                                 early_stopping_patience=0, dataloader_workers=settings["loader_workers"])
    marks = StepMarks(warmup + 1, warmup + timed, device)
    captured = Captured()
    core_log = logging.getLogger("forgetting")
    core_log.addHandler(captured)
    folder = work / name
    start = time.perf_counter()
    try:
        model = copy.deepcopy(base).to(device)
        model.set_attn_implementation(attention)
        apply_training_config(model, params)  # freeze first: the penalty anchors exactly the parameters that train
        regularisers = [EWCPenalty(model, fisher, adapt.ewc_lambda, getattr(torch, adapt.ewc_dtype))] if ewc else []
        with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its log lines: one line per configuration
            train_ctc(model, processor, corpus.train, {"de": corpus.dev}, params, "bench", folder / "model",
                      folder / "reports", folder / "checkpoints", f"{name:-<16}", keep="last", regularisers=regularisers,
                      extra_callbacks=[marks])
        result["after_timed_s"] = time.perf_counter() - marks.end[warmup + timed]
        # the core absorbs an out-of-memory by cutting micro-batches into pieces: the run then measured smaller pieces
        result["oom"] = any("out of memory" in m for m in captured.messages)
        if not result["oom"]:
            result.update(measure(marks, base.config, settings["trainable_params"], peaks))
    except Exception as err:  # one configuration's failure is recorded; the next one runs
        if not is_oom(err):
            result["error"] = f"{type(err).__name__}: {err}"
        result["oom"] = is_oom(err)
    finally:
        core_log.removeHandler(captured)
        model = regularisers = None
        shutil.rmtree(folder, ignore_errors=True)
        # accelerate keeps one precision per process; the next configuration's Trainer sets its own
        AcceleratorState._reset_state()
        release_memory(device)
    result["wall_s"] = time.perf_counter() - start
    result["core_warnings"] = captured.messages
    result["precision_used"], result["attn_implementation_used"] = marks.precision or None, marks.attention or None
    return result


def measure(marks: StepMarks, config: Wav2Vec2Config, trainable: int, peaks: dict | None) -> dict[str, Any]:
    """Throughput, loader wait, padding, FLOPs and memory of the timed steps `marks.first`..`marks.last`."""
    steps = range(marks.first, marks.last + 1)
    wall = marks.end[marks.last] - marks.end[marks.first - 1]
    # between two steps: the previous step's log line (the Trainer's work), then the wait for the next micro-batches
    wait = sum(marks.begin[k] - max(marks.end[k - 1], marks.logged.get(k - 1, 0.0)) for k in steps)
    micro = marks.batches[(marks.first - 1) * marks.accumulation: marks.last * marks.accumulation]
    if len(micro) < len(steps) * marks.accumulation:
        raise ValueError(f"the timed steps run past the first epoch ({len(marks.batches)} micro-batches): more train clips")
    utts = [i for batch in micro for i in batch]
    audio_s = sum(marks.lengths[i] for i in utts) / TARGET_SR
    frames = [conv_lengths(config, n)[-1] for n in marks.lengths]
    flops = sum(training_flops(config, trainable, marks.lengths[i]) for i in utts)
    peak = (peaks or {}).get(marks.precision)
    return {
        "timed_utterances": len(utts), "timed_audio_s": audio_s, "timed_mean_clip_s": audio_s / len(utts),
        "timed_wall_s": wall, "audio_hours_per_gpu_hour": audio_s / wall, "utterances_per_s": len(utts) / wall,
        "step_s_mean": wall / len(steps), "loader_wait_s": wait, "loader_wait_fraction": wait / wall,
        "audio_hours_per_gpu_hour_without_loader_wait": audio_s / (wall - wait),
        "padding_fraction": padding_fraction(micro, frames), "epoch_padding_fraction": padding_fraction(marks.batches, frames),
        "model_flops_per_audio_s": flops / audio_s, "mfu": flops / wall / peak if peak else None,
        "peak_memory_allocated_bytes": marks.peak_allocated, "peak_memory_reserved_bytes": marks.peak_reserved,
    }


def time_call(fn: Callable[[], Any], device: torch.device) -> tuple[float, int | None]:
    """Seconds `fn` takes and the peak CUDA memory allocated meanwhile (None on the CPU)."""
    release_memory(device)
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start, peak_memory(device)


def decoded(split: Split, processor) -> list[dict]:
    """The split's `UtteranceDataset` items, decoded once: normalised 16 kHz audio (samples,), label ids, clip name."""
    dataset = UtteranceDataset(split.utterances, split.clips, processor)
    return [dataset[i] for i in range(len(dataset))]


def bench_fisher(base: Wav2Vec2ForCTC, adapt: AdaptParams, corpus: Corpus, processor, settings: dict,
                 device: torch.device) -> dict[str, Any]:
    """`estimate_fisher` (empirical, float32 model in eval mode, the adapt stage's trainable set) over the same
    utterances, longest first as the importance stage takes them: batch 1 (the loop) and `fisher_batch_size`. The
    clips are decoded beforehand: this is the model's part alone."""
    result: dict[str, Any] = dict.fromkeys(SECTION_FIELDS["fisher"])
    chosen = choose_utterances(corpus.train.utterances, settings["fisher_utterances"], settings["seed"])
    utts = [{"input_values": torch.from_numpy(item["input_values"]), "labels": torch.tensor(item["labels"])}
            for item in decoded(Split(chosen, corpus.train.clips), processor)]
    batch = settings["fisher_batch_size"]
    result.update(utterances=len(utts), audio_s=sum(u.duration_s for u in chosen), batch_size=batch, oom=False,
                  error=None)
    model = copy.deepcopy(base).to(device)
    try:
        apply_training_config(model, adapt)
        estimate_fisher(model, utts[:batch], kind="empirical", batch_size=1)  # warm-up of both paths
        estimate_fisher(model, utts[:batch], kind="empirical", batch_size=batch)
        result["looped_s"], result["looped_peak_memory_bytes"] = time_call(
            lambda: estimate_fisher(model, utts, kind="empirical", batch_size=1), device)
        result["batched_s"], result["batched_peak_memory_bytes"] = time_call(
            lambda: estimate_fisher(model, utts, kind="empirical", batch_size=batch), device)
    except Exception as err:  # recorded: the rest of the run (and the device time spent on it) is kept
        result["oom"] = is_oom(err)
        result["error"] = None if result["oom"] else f"{type(err).__name__}: {err}"
    finally:
        model = None
        release_memory(device)
    for path in ("looped", "batched"):
        if result[f"{path}_s"] is not None:
            result[f"{path}_utterances_per_s"] = len(utts) / result[f"{path}_s"]
            result[f"{path}_audio_s_per_s"] = result["audio_s"] / result[f"{path}_s"]
    if result["looped_s"] and result["batched_s"]:
        result["batched_over_looped"] = result["looped_s"] / result["batched_s"]
        result["best_path"] = "batched" if result["batched_s"] < result["looped_s"] else "looped"
    return result


def bench_eval(base: Wav2Vec2ForCTC, corpus: Corpus, processor, batch: int, device: torch.device) -> dict[str, Any]:
    """Greedy transcription in float32 as the eval stage runs it (`transcribe`: clips decoded in the main process),
    and the model's part alone (the same batches pre-decoded: forward, padding frames blanked, argmax)."""
    result: dict[str, Any] = dict.fromkeys(SECTION_FIELDS["eval"])
    utterances = corpus.eval.utterances
    audio_s = sum(u.duration_s for u in utterances)
    result.update(utterances=len(utterances), audio_s=audio_s, batch_size=batch, oom=False, error=None)
    model = copy.deepcopy(base).to(device).eval()
    order = sorted(decoded(corpus.eval, processor), key=lambda u: -len(u["input_values"]))  # longest first, as transcribe
    collate = CTCCollator()
    batches = [collate(order[i:i + batch]) for i in range(0, len(order), batch)]

    def model_only() -> None:
        with torch.inference_mode():
            for b in batches:
                mask = b["attention_mask"].to(device)
                logits = model(b["input_values"].to(device), attention_mask=mask).logits
                blank_padding_frames(model, logits, mask).argmax(-1).cpu()

    try:
        transcribe(model, processor, utterances[:batch], corpus.eval.clips, batch, progress=False)  # warm-up
        result["transcribe_s"], _ = time_call(lambda: transcribe(model, processor, utterances, corpus.eval.clips, batch,
                                                             progress=False), device)
        result["model_only_s"], _ = time_call(model_only, device)
        result["audio_hours_per_gpu_hour"] = audio_s / result["transcribe_s"]
        result["model_only_audio_hours_per_gpu_hour"] = audio_s / result["model_only_s"]
    except Exception as err:  # recorded: the rest of the run is kept
        result["oom"] = is_oom(err)
        result["error"] = None if result["oom"] else f"{type(err).__name__}: {err}"
    finally:
        model = None
        release_memory(device)
    return result


def bench_loader(corpus: Corpus, processor, workers: int, batches: int, device: torch.device) -> dict[str, Any]:
    """The training DataLoader alone (decode, resample, normalise, collate; `workers` processes): audio seconds per
    second over `batches` batches, timed once the batches the workers prefetch at start-up are taken."""
    prefetched = max(1, workers * PREFETCH_FACTOR)
    result: dict[str, Any] = {"workers": workers, "batch_size": EFFECTIVE_BATCH, "batches": batches, "audio_s": 0.0,
                              "audio_s_per_s": None, "error": None}
    utterances = corpus.train.utterances[: (batches + prefetched) * EFFECTIVE_BATCH]
    try:
        loader = DataLoader(UtteranceDataset(utterances, corpus.train.clips, processor), batch_size=EFFECTIVE_BATCH,
                            collate_fn=CTCCollator(), num_workers=workers, prefetch_factor=PREFETCH_FACTOR if workers else None,
                            pin_memory=device.type == "cuda")
        iterator = iter(loader)
        for _ in range(prefetched):
            next(iterator)
        start = time.perf_counter()
        for batch in iterator:
            result["audio_s"] += float(batch["attention_mask"].sum()) / TARGET_SR
        result["audio_s_per_s"] = result["audio_s"] / (time.perf_counter() - start)
    except Exception as err:  # recorded: the rest of the run is kept
        result["error"] = f"{type(err).__name__}: {err}"
    return result


def batch_size_table(configs: list[dict], table: dict[int, int]) -> dict[str, Any]:
    """Per GPU memory size of the preset's table: its batch size, the largest measured batch size (SDPA runs) whose
    peak fits (HEADROOM × peak allocated ≤ the size in GiB; an out-of-memory run fits nowhere) per precision and EWC,
    and whether the preset's batch size fits (one smaller than every measured size fits when a measured one does,
    else is unknown). All null without CUDA peaks (a CPU run)."""
    gpu = any(c["peak_memory_allocated_bytes"] is not None or c["oom"] for c in configs)
    out = {}
    for gb, preset_batch in sorted(table.items()):
        capacity, largest, fits = gb * 2**30, {}, {}
        for dtype in DTYPES:
            for ewc in (True, False):
                key = f"{dtype}-{'ewc' if ewc else 'plain'}"
                sizes = [c["batch_size"] for c in configs if (c["dtype"], c["ewc"], c["attn_implementation"]) ==
                         (dtype, ewc, "sdpa") and not c["oom"] and c["peak_memory_allocated_bytes"] is not None
                         and HEADROOM * c["peak_memory_allocated_bytes"] <= capacity]
                largest[key] = max(sizes, default=None) if gpu else None
                below_measured = preset_batch < min(BATCH_SIZES) and largest[key] is None
                fits[key] = None if not gpu or below_measured else (largest[key] or 0) >= preset_batch
        out[f"{gb}GB"] = {"capacity_bytes": capacity, "preset_batch_size": preset_batch,
                          "largest_fitting_batch_size": largest, "preset_batch_size_fits": fits}
    return out


def comparisons(configs: list[dict]) -> dict[str, Any]:
    """Step-time ratios (the inverse of the throughput ratios) between configurations that differ in one setting."""
    by = {(c["dtype"], c["ewc"], c["batch_size"], c["attn_implementation"]): c["audio_hours_per_gpu_hour"] for c in configs}

    def ratio(slow: tuple, fast: tuple) -> float | None:
        return by[fast] / by[slow] if by.get(slow) and by.get(fast) else None

    measured = [c for c in configs if c["audio_hours_per_gpu_hour"]]
    best = max(measured, key=lambda c: c["audio_hours_per_gpu_hour"], default=None)
    return {
        "ewc_over_plain_step_time": {f"{d}-b{b}": ratio((d, True, b, "sdpa"), (d, False, b, "sdpa"))
                                     for d in DTYPES for b in BATCH_SIZES},
        "fp16_over_bf16_step_time": {f"{'ewc' if e else 'plain'}-b{b}": ratio(("fp16", e, b, "sdpa"), ("bf16", e, b, "sdpa"))
                                     for e in (True, False) for b in BATCH_SIZES},
        "eager_over_sdpa_step_time": {f"{d}-{'ewc' if e else 'plain'}-b{b}": ratio((d, e, b, "eager"), (d, e, b, "sdpa"))
                                      for d, e, b, a in CONFIGS if a == "eager"},
        "best_config": best["name"] if best else None,
        "best_audio_hours_per_gpu_hour": best["audio_hours_per_gpu_hour"] if best else None,
    }


def verdicts(report: dict) -> dict[str, bool | None]:
    """Each target of TARGETS met (True), missed (False) or not measurable in this run (None)."""
    ewc = [r for r in report["comparisons"]["ewc_over_plain_step_time"].values() if r is not None]
    waits = [c["loader_wait_fraction"] for c in report["configs"] if c["loader_wait_fraction"] is not None]
    fisher = report["fisher"]["fisher_over_train_audio_throughput"]
    rates = [c["audio_hours_per_gpu_hour"] for c in report["configs"]
             if (c["dtype"], c["ewc"]) == ("bf16", True) and c["audio_hours_per_gpu_hour"]]
    padding = [c["epoch_padding_fraction"] for c in report["configs"] if c["epoch_padding_fraction"] is not None]
    fits = [v for row in report["batch_size_table"].values() for k, v in row["preset_batch_size_fits"].items()
            if k.startswith("fp16") and v is not None]  # the preset's table is for fp16
    return {
        "full_run_wall_s": None if report["smoke"] else report["wall_s"] <= TARGETS["full_run_wall_s_max"],
        "bf16_ewc_throughput": (max(rates) >= TARGETS["bf16_ewc_audio_hours_per_h100_hour_min"]
                                if rates and "H100" in report["device"] else None),
        "padding": max(padding) <= TARGETS["padding_fraction_max"] if padding else None,
        "ewc_step_time": all(r <= TARGETS["ewc_over_plain_step_time_max"] for r in ewc) if ewc else None,
        "loader_keeps_up": all(w <= TARGETS["loader_wait_fraction_max"] for w in waits) if waits else None,
        "fisher_throughput": fisher >= TARGETS["fisher_over_train_audio_throughput_min"] if fisher is not None else None,
        "preset_batch_sizes_fit": all(fits) if fits else None,
    }


def work_folder(requested: Path | None) -> Path:
    """Where clips, checkpoints and models go: `requested`, else /dev/shm when it has SHM_MIN_FREE bytes free (no disk
    writes inside the measured runs' ends), else the system's temporary folder."""
    if requested is not None:
        return requested
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and shutil.disk_usage(shm).free >= SHM_MIN_FREE else Path(tempfile.gettempdir())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps per configuration (the test)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed optimiser steps per configuration "
                        f"(default {FULL['warmup_steps']}, smoke {SMOKE['warmup_steps']})")
    parser.add_argument("--timed-steps", type=int, default=None, help="timed optimiser steps per configuration "
                        f"(default {FULL['timed_steps']}, smoke {SMOKE['timed_steps']}; more need more train clips)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers for training; default the preset's adapt.dataloader_workers (smoke: 0)")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for clips and checkpoints (default: see work_folder)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/gpu.json"))
    args = parser.parse_args()
    if args.device == "cpu" and torch.cuda.is_available():
        parser.error("--device cpu: the training core trains on the GPU whenever one is visible; run with "
                     "CUDA_VISIBLE_DEVICES= to benchmark the CPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    sizes = SMOKE if args.smoke else FULL
    args.warmup_steps = sizes["warmup_steps"] if args.warmup_steps is None else args.warmup_steps
    args.timed_steps = sizes["timed_steps"] if args.timed_steps is None else args.timed_steps
    if min(args.warmup_steps, args.timed_steps) < 1 or \
            (args.warmup_steps + args.timed_steps) * EFFECTIVE_BATCH > sizes["train_clips"]:
        parser.error(f"--warmup-steps and --timed-steps: at least 1 each, together within one epoch of "
                     f"{sizes['train_clips']} clips at {EFFECTIVE_BATCH} a step")
    return args


def environment(device: torch.device) -> dict[str, Any]:
    """The device, its peak FLOP/s and memory, and the versions: the report's first fields."""
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})"
    return {"device": name, "device_total_memory_bytes": torch.cuda.get_device_properties(device).total_memory if cuda
            else None, "peak_flops": peak_flops(name) if cuda else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "commit": git_commit()}


def git_commit() -> str | None:
    """The repository's commit (with `-dirty` when the tree has changes), or None outside a git checkout."""
    done = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty", "--abbrev=40"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def null_fields_why(device: torch.device) -> dict[str, str]:
    """Why the fields only a GPU measures are null (nothing on a GPU)."""
    if device.type == "cuda":
        return {}
    flops, memory = "CUDA only: no peak FLOP/s for a CPU", "CUDA only: torch keeps no allocator statistics on the CPU"
    return {"mfu": flops, "peak_flops": flops, "peak_memory_allocated_bytes": memory, "peak_memory_reserved_bytes": memory,
            "memory_allocated_before_bytes": memory, "fisher.*_peak_memory_bytes": memory,
            "batch_size_table": "CUDA only: the fits need CUDA peak memory", "device_total_memory_bytes": "CUDA only",
            "cudnn": "CUDA only", "cuda": "None for a CPU build of torch"}


def prepare(work: Path, params: Params, args: argparse.Namespace, sizes: dict) -> tuple:
    """The corpus, the processor, the start model (on the CPU), a random Fisher for its trainable set, and settings."""
    start = time.perf_counter()
    alphabet = params.sample.de.alphabet
    corpus = write_corpus(work / "corpus", {"train": sizes["train_clips"], "dev": sizes["dev_clips"],
                                            "eval": sizes["eval_clips"]}, alphabet, params.seed,
                          1 if args.smoke else len(os.sched_getaffinity(0)))
    corpus_s = time.perf_counter() - start
    write_json(work / "vocab.json", build_vocab([alphabet]))
    processor = build_processor(work / "vocab.json")
    model_params = dataclasses.replace(params.model, name=TINY_MODEL, config=SMOKE_CONFIG if args.smoke else XLSR_300M)
    base = build_model(model_params, processor.tokenizer.get_vocab(), params.adapt.seed)
    shaped = copy.deepcopy(base)
    apply_training_config(shaped, params.adapt)  # the trainable set (feature encoder frozen, mask embedding added)
    generator = torch.Generator().manual_seed(params.seed)
    fisher = {n: torch.rand(p.shape, generator=generator) for n, p in shaped.named_parameters() if p.requires_grad}
    steps = args.warmup_steps + args.timed_steps
    settings = {
        **sizes, "warmup_steps": args.warmup_steps, "timed_steps": args.timed_steps, "loader_workers": args.workers,
        "trainable_params": sum(p.numel() for p in fisher.values()), "work_folder": str(work.parent),
        "corpus_write_s": corpus_s, "clip_format": f"MP3, {CLIP_SR} Hz mono, noise",
        "clip_durations": {"distribution": "lognormal, clipped", "median_s": MEDIAN_S, "sigma_log": SIGMA, "min_s": MIN_S,
                           "max_s": MAX_S},
        "chars_per_s": CHARS_PER_S, "train_mean_clip_s": statistics.fmean(u.duration_s for u in corpus.train.utterances),
        "effective_batch_size": EFFECTIVE_BATCH, "preset": str(PRESET),
        "adapt": {k: v for k, v in dataclasses.asdict(params.adapt).items() if k != "lora"},
        "adapt_overrides": {"batch_size": "per configuration", "fp16, bf16": "per configuration",
                            "effective_batch_size": EFFECTIVE_BATCH, "epochs": None, "max_steps": steps,
                            "eval_steps": steps, "early_stopping_patience": 0, "dataloader_workers": args.workers,
                            "keep": "last"},
        "eval_batch_size": params.eval.batch_size, "seed": params.seed,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "headroom": HEADROOM, "configs": [list(c) for c in CONFIGS]}
    return corpus, processor, base, fisher, settings


def against_training(configs: list[dict], fisher: dict, loader: dict) -> None:
    """Fill in the Fisher's and the loader's comparisons with the fastest training configuration."""
    best = max((c["audio_hours_per_gpu_hour"] for c in configs if c["audio_hours_per_gpu_hour"]), default=None)
    batched = fisher["batched_audio_s_per_s"]
    fisher["train_audio_s_per_s"] = best
    fisher["fisher_over_train_audio_throughput"] = batched / best if batched and best else None  # the batched path's
    waits = [c["loader_wait_fraction"] for c in configs if c["loader_wait_fraction"] is not None]
    rate = loader["audio_s_per_s"]
    loader.update(best_train_audio_s_per_s=best, loader_over_best_training=rate / best if rate and best else None,
                  max_loader_wait_fraction=max(waits, default=None),
                  keeps_up=max(waits) <= TARGETS["loader_wait_fraction_max"] if waits else None)


def main() -> None:
    args = parse_args()
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    transformers.logging.set_verbosity_error()  # one line per configuration, not the Trainer's progress bars
    transformers.logging.disable_progress_bar()
    params: Params = load_params(PRESET)
    sizes = SMOKE if args.smoke else FULL
    args.workers = args.workers if args.workers is not None else 0 if args.smoke else params.adapt.dataloader_workers
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=work_folder(args.tmp)) as tmp:
        corpus, processor, base, fisher, settings = prepare(Path(tmp), params, args, sizes)  # clip writers fork before CUDA
        env = environment(device)
        print(f"bench gpu: {env['device']}, {len(CONFIGS)} configurations × ({args.warmup_steps} warm-up + "
              f"{args.timed_steps} timed steps), {settings['trainable_params']:,} trainable parameters; corpus "
              f"{len(corpus.train.utterances)} clips in {settings['corpus_write_s']:.1f} s", flush=True)
        configs = []
        for i, cfg in enumerate(CONFIGS, 1):
            configs.append(run_config(cfg, base, fisher, processor, corpus, params.adapt, settings, env["peak_flops"],
                                      device, Path(tmp)))
            print(f"[{i}/{len(CONFIGS)}] {describe(configs[-1])}", flush=True)
        fisher_result = bench_fisher(base, params.adapt, corpus, processor, settings, device)
        print(f"fisher: looped {round_or_none(fisher_result['looped_utterances_per_s'])} utt/s, batched (batch "
              f"{fisher_result['batch_size']}) {round_or_none(fisher_result['batched_utterances_per_s'])} utt/s"
              f"{', out of memory' if fisher_result['oom'] else ''}", flush=True)
        eval_result = bench_eval(base, corpus, processor, params.eval.batch_size, device)
        print(f"eval: transcribe {round_or_none(eval_result['audio_hours_per_gpu_hour'])} audio-h/GPU-h, the model alone "
              f"{round_or_none(eval_result['model_only_audio_hours_per_gpu_hour'])}", flush=True)
        loader = bench_loader(corpus, processor, args.workers, sizes["loader_batches"], device)
        print(f"loader alone ({args.workers} workers): {round_or_none(loader['audio_s_per_s'], 0)} audio s/s", flush=True)

    against_training(configs, fisher_result, loader)
    trainable = settings["trainable_params"]
    report = {
        **env, "load_average_1min_at_start": round(load_at_start, 2), "smoke": args.smoke, "settings": settings,
        "model": {"config": SMOKE_CONFIG if args.smoke else XLSR_300M, "vocab_size": base.config.vocab_size,
                  "params": sum(p.numel() for p in base.parameters()), "trainable_params": trainable,
                  "flops_per_audio_s_at_median_clip": training_flops(base.config, trainable, round(MEDIAN_S * TARGET_SR))
                  / MEDIAN_S},
        "configs": configs, "comparisons": comparisons(configs),
        "batch_size_table": batch_size_table(configs, preset_batch_table(PRESET)),
        "fisher": fisher_result, "eval": eval_result, "loader": loader, "targets": TARGETS,
        "null_fields_why": null_fields_why(device), "failed_configs": [c["name"] for c in configs if c["error"]],
        "wall_s": time.perf_counter() - start,
    }
    report["pass"] = verdicts(report)
    write_json(args.out, report)  # first: a field mismatch below must not cost the measurements
    check_fields(report)
    ewc = max((r for r in report["comparisons"]["ewc_over_plain_step_time"].values() if r is not None), default=None)
    print(f"bench gpu: best {describe_best(report)}; EWC step ×{round_or_none(ewc, 3)}, Fisher/train "
          f"{round_or_none(fisher_result['fisher_over_train_audio_throughput'])}, eval "
          f"{round_or_none(eval_result['audio_hours_per_gpu_hour'])} audio-h/GPU-h, loader/train "
          f"{round_or_none(loader['loader_over_best_training'])}, {report['wall_s']:.0f} s [{env['device']}] -> {args.out}")
    failed = report["failed_configs"] + [name for name in SECTION_FIELDS if report[name]["error"]]
    if failed:
        sys.exit(f"bench gpu: failed (not by out of memory), see their `error` in {args.out}: {', '.join(failed)}")


def check_fields(report: dict) -> None:
    """The report holds exactly the declared fields (REPORT_FIELDS, CONFIG_FIELDS, SECTION_FIELDS)."""
    problems = [] if set(report) == set(REPORT_FIELDS) else [f"top level: {sorted(set(report) ^ set(REPORT_FIELDS))}"]
    problems += [f"config {c['name']}: {sorted(set(c) ^ set(CONFIG_FIELDS))}" for c in report["configs"]
                 if set(c) != set(CONFIG_FIELDS)]
    problems += [f"{section}: {sorted(set(report[section]) ^ set(fields))}" for section, fields in SECTION_FIELDS.items()
                 if set(report[section]) != set(fields)]
    if problems:
        raise ValueError(f"the report's fields differ from the declared ones: {'; '.join(problems)}")


def round_or_none(value: float | None, digits: int = 2) -> float | None:
    return round(value, digits) if value is not None else None


def describe(c: dict) -> str:
    """One progress line for a configuration."""
    head = f"{c['name']} (×{c['gradient_accumulation']}, {c['precision_used']}, {c['attn_implementation_used']})"
    if c["error"]:
        return f"{head}: FAILED {c['error']}"
    if c["oom"]:
        return f"{head}: out of memory ({c['wall_s']:.0f} s)"
    peak = f"{c['peak_memory_allocated_bytes'] / 2**30:.1f} GiB" if c["peak_memory_allocated_bytes"] is not None else "n/a"
    mfu = f"{c['mfu']:.3f}" if c["mfu"] is not None else "n/a"
    warnings = f", {len(c['core_warnings'])} core warning(s)" if c["core_warnings"] else ""
    return (f"{head}: {c['audio_hours_per_gpu_hour']:.1f} audio-h/GPU-h, MFU {mfu}, peak {peak}, padding "
            f"{c['padding_fraction']:.3f}, loader wait {c['loader_wait_fraction']:.1%}{warnings} ({c['wall_s']:.0f} s)")


def describe_best(report: dict) -> str:
    comparison = report["comparisons"]
    if comparison["best_config"] is None:
        return "none measured"
    return f"{comparison['best_audio_hours_per_gpu_hour']:.1f} audio-h/GPU-h ({comparison['best_config']})"


if __name__ == "__main__":
    main()
