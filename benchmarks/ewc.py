"""EWC cost on the tiny demo model and on a wav2vec2-base-sized random model: step time, memory, Fisher throughput.

(a) Training step time (the micro-batches' forward, CTC loss and backward, then AdamW) with the EWC penalty over
    without it, at gradient accumulation 1 and 4, for the penalty as the training core applies it and as it used to:
    - after: its gradient λ·F·(θ − θ*) added once per optimiser step, after the last micro-batch's backward
      (`EWCPenalty.add_gradient`), its value computed only on logged steps (every LOGGING_STEPS-th);
    - before: the old per-micro-batch penalty, emulated: its value, and its gradient at scale 1/accumulation, after
      every micro-batch's backward.
    The variants are interleaved step by step; `measured` is the ratio of median step times. `derived` adds the
    penalty's own cost per optimiser step (medians of `add_gradient` and `value` timed alone, many times, the value
    counted once per LOGGING_STEPS steps after) to the plain step's median: the same quantity without the noise of
    whole steps on a shared machine. Targets (derived, after): ≤ 1.05 at accumulation 1, ≤ 1.02 at accumulation 4.
(b) Memory EWC adds — the bytes it holds (F, θ* and a one-tensor workspace) plus the larger of the peak transient
    of `add_gradient` and `value` and the rise in a whole training step's peak — over 2× the trainable parameter
    bytes. Target ≤ 1.10.
    CUDA: `torch.cuda.max_memory_allocated` (the allocator's own count). CPU: torch keeps no allocator statistics,
    so a TorchDispatchMode counts every storage an op creates until the last tensor using it dies (tensor memory
    only; allocator caching and kernels' internal scratch are not seen).
(c) Fisher utterances/s of the one-at-a-time loop and of the batched path against training utterances/s of the same
    model at the same batch size (target: the faster path ≥ 0.7), and whether both paths agree (≤ 1e-5 relative).

    python -m benchmarks.ewc [--device cuda] [--sizes tiny,base] [--no-freeze-feature-encoder] ...   → reports/bench/ewc.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.nn.utils.rnn import pad_sequence
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from forgetting.methods.fisher import estimate_fisher
from forgetting.methods.penalty import EWCPenalty
from forgetting.training.trainer import LOGGING_STEPS

COMMON = dict(pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True, feat_extract_norm="layer",
              do_stable_layer_norm=True, mask_time_prob=0.0, layerdrop=0.0)
CONFIGS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, conv_dim=[64] * 7,
                 conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4, vocab_size=45),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, vocab_size=32),
}
TARGETS = {"step_time_ratio_max": 1.05, "step_time_ratio_accumulation_4_max": 1.02, "memory_ratio_max": 1.10,
           "fisher_over_train_throughput_min": 0.7, "batched_vs_looped_rel_max": 1e-5}
ACCUMULATIONS = (1, 4)  # micro-batches per optimiser step
VARIANTS = ("plain", "before", "after")  # no penalty; the penalty per micro-batch (old); once per optimiser step (now)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of storages created by ops while active, each counted until the last tensor on it is collected."""

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._refs: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or (ptr := t.untyped_storage().data_ptr()) in seen or ptr == 0:
                continue
            if ptr not in self._refs:
                self.current += t.untyped_storage().nbytes()
                self.peak = max(self.peak, self.current)
            self._refs[ptr] = self._refs.get(ptr, 0) + 1
            weakref.finalize(t, self._release, ptr, t.untyped_storage().nbytes())
        return out

    def _release(self, ptr: int, nbytes: int) -> None:
        self._refs[ptr] -= 1
        if not self._refs[ptr]:
            del self._refs[ptr]
            self.current -= nbytes


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory allocated while `fn` runs, above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with LiveTensorBytes() as tracker:
        fn()
    return tracker.peak


def make_batch(n: int, audio_s: float, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` utterances of 0.75-1 × `audio_s` seconds of noise plus a sine (normalised) with ~10 labels/s."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        samples = int(16000 * audio_s * (0.75 + 0.25 * float(torch.rand(1, generator=g))))
        t = torch.arange(samples) / 16000
        x = 0.3 * torch.randn(samples, generator=g) + torch.sin(2 * math.pi * 220 * t)
        labels = torch.randint(1, vocab, (max(1, int(10 * samples / 16000)),), generator=g)
        out.append({"input_values": (x - x.mean()) / x.std(), "labels": labels})
    return out


def collate(utts: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, torch.Tensor]:
    audio = [u["input_values"] for u in utts]
    return {"input_values": pad_sequence(audio, batch_first=True).to(device),
            "attention_mask": pad_sequence([torch.ones(len(a), dtype=torch.long) for a in audio], batch_first=True).to(device),
            "labels": pad_sequence([u["labels"] for u in utts], batch_first=True, padding_value=-100).to(device)}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_step(model: Wav2Vec2ForCTC, optimizer: torch.optim.Optimizer, micro_batches: list[dict[str, torch.Tensor]],
               penalty: EWCPenalty, variant: str, logged: bool) -> None:
    """One optimiser step over `micro_batches` (each loss divided by their number), with the penalty as `variant`
    says (one of VARIANTS, see the module docstring); `logged`: a step whose penalty value the core logs."""
    optimizer.zero_grad(set_to_none=True)
    accumulation = len(micro_batches)
    for batch in micro_batches:
        (model(**batch).loss / accumulation).backward()
        if variant == "before":
            penalty.value(model)
            penalty.add_gradient(model, 1 / accumulation)
    if variant == "after":
        penalty.add_gradient(model)
        if logged:
            penalty.value(model)
    optimizer.step()


def step_times(model: Wav2Vec2ForCTC, optimizer: torch.optim.Optimizer, micro_batches: list[dict[str, torch.Tensor]],
               penalty: EWCPenalty, steps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per optimiser step of each variant: `steps` of each, interleaved with the order rotating, after one
    warm-up step each. The after variant logs on its steps 0, LOGGING_STEPS, 2·LOGGING_STEPS, ..."""
    for variant in VARIANTS:
        train_step(model, optimizer, micro_batches, penalty, variant, logged=True)
    times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for i in range(steps):
        for variant in VARIANTS[i % 3:] + VARIANTS[:i % 3]:
            times[variant].append(timed(lambda v=variant, i=i: train_step(model, optimizer, micro_batches, penalty, v,
                                                                          logged=i % LOGGING_STEPS == 0), device))
    return times


def bench_model(size: str, device: torch.device, batch_size: int, audio_s: float, steps: int, fisher_utts: int,
                fisher_repeats: int, freeze_feature_encoder: bool) -> dict:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**COMMON, **CONFIGS[size])).to(device).train()
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    trainable = [p for p in model.parameters() if p.requires_grad]
    param_bytes = sum(p.numel() * p.element_size() for p in trainable)
    g = torch.Generator().manual_seed(1)
    fisher = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}
    penalty = EWCPenalty(model, fisher, lam=0.4)
    del fisher
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    micro_batches = [collate(make_batch(batch_size, audio_s, model.config.vocab_size, seed=2 + i), device)
                     for i in range(max(ACCUMULATIONS))]

    # (a) whole steps (accumulation 4: a quarter of the steps), then the penalty's calls alone, with gradients present
    accumulation = {}
    for count in ACCUMULATIONS:
        times = step_times(model, optimizer, micro_batches[:count], penalty, max(4, steps // count), device)
        accumulation[count] = {"steps": len(times["plain"]), "step_s": times,
                               "step_s_median": {v: statistics.median(t) for v, t in times.items()}}
    add_s = statistics.median(timed(lambda: penalty.add_gradient(model), device) for _ in range(5 * steps))
    value_s = statistics.median(timed(lambda: penalty.value(model), device) for _ in range(5 * steps))
    for count, result in accumulation.items():
        plain = result["step_s_median"]["plain"]
        result["measured_ratio"] = {v: result["step_s_median"][v] / plain for v in ("before", "after")}
        result["derived_ratio"] = {"before": 1 + count * (add_s + value_s) / plain,
                                   "after": 1 + (add_s + value_s / LOGGING_STEPS) / plain}
    # (b) the penalty's calls alone, then whole steps at accumulation 1
    penalty_peak = max(peak_extra_bytes(lambda: penalty.add_gradient(model), device),
                       peak_extra_bytes(lambda: penalty.value(model), device))
    step_peaks = {v: peak_extra_bytes(lambda v=v: train_step(model, optimizer, micro_batches[:1], penalty, v, logged=True),
                                      device) for v in ("plain", "after")}
    added = penalty.held_bytes() + max(penalty_peak, step_peaks["after"] - step_peaks["plain"], 0)
    # (c) Fisher throughput; the same utterances through both paths (the loop warmed up on one utterance first).
    model.zero_grad(set_to_none=True)
    utts = make_batch(fisher_utts, audio_s, model.config.vocab_size, seed=3)
    estimate_fisher(model, utts[:1], kind="empirical", batch_size=1)
    results, times = {}, {1: [], batch_size: []}
    for _ in range(fisher_repeats):  # the paths interleaved, so a slow spell of the machine hits both
        for bs in times:
            times[bs].append(timed(lambda bs=bs: results.__setitem__(
                bs, estimate_fisher(model, utts, kind="empirical", batch_size=bs)), device))
    seconds = {bs: statistics.median(t) for bs, t in times.items()}
    looped = {n: t.cpu() for n, t in results[1].tensors.items()}
    batched = {n: t.cpu() for n, t in results[batch_size].tensors.items()}
    top = max(float(t.abs().max()) for t in looped.values())
    per_tensor = [float((batched[n] - t).norm() / t.norm()) for n, t in looped.items() if float(t.norm()) > 1e-9 * top]
    train_rate = batch_size / accumulation[1]["step_s_median"]["plain"]
    fisher_rates = {"loop": fisher_utts / seconds[1], "batched": fisher_utts / seconds[batch_size]}
    best = max(fisher_rates, key=fisher_rates.get)
    result = {
        "trainable_params": sum(p.numel() for p in trainable), "trainable_param_bytes": param_bytes,
        "batch_size": batch_size, "audio_s_max": audio_s, "logging_steps": LOGGING_STEPS,
        "accumulation": {str(count): r for count, r in accumulation.items()},
        "add_gradient_s_median": add_s, "value_s_median": value_s,
        "ewc_held_bytes": penalty.held_bytes(), "penalty_calls_peak_extra_bytes": penalty_peak,
        "step_peak_extra_bytes_plain": step_peaks["plain"], "step_peak_extra_bytes_ewc": step_peaks["after"],
        "ewc_added_bytes": added, "memory_ratio": added / (2 * param_bytes),
        "fisher_utterances": fisher_utts, "fisher_repeats": fisher_repeats,
        "fisher_loop_s": seconds[1], "fisher_batched_s": seconds[batch_size],
        "fisher_loop_utt_per_s": fisher_rates["loop"], "fisher_batched_utt_per_s": fisher_rates["batched"],
        "train_utt_per_s": train_rate, "fisher_best_path": best, "fisher_over_train_throughput": fisher_rates[best] / train_rate,
        "batched_vs_looped_max_rel": max(float((batched[n] - t).abs().max()) for n, t in looped.items()) / top,
        "batched_vs_looped_worst_tensor_rel": max(per_tensor),
    }
    result["pass"] = {
        "step_time": accumulation[1]["derived_ratio"]["after"] <= TARGETS["step_time_ratio_max"],
        "step_time_accumulation_4": accumulation[4]["derived_ratio"]["after"] <= TARGETS["step_time_ratio_accumulation_4_max"],
        "memory": result["memory_ratio"] <= TARGETS["memory_ratio_max"],
        "fisher_throughput": result["fisher_over_train_throughput"] >= TARGETS["fisher_over_train_throughput_min"],
        "batched_equals_looped": max(result["batched_vs_looped_max_rel"], result["batched_vs_looped_worst_tensor_rel"])
        <= TARGETS["batched_vs_looped_rel_max"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="tiny,base", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--batch-tiny", type=int, default=8)
    parser.add_argument("--batch-base", type=int, default=4)
    parser.add_argument("--audio-s", type=float, default=2.0, help="longest utterance, seconds")
    parser.add_argument("--steps", type=int, default=20,
                        help="timed steps per variant at accumulation 1 (tiny; base takes half, accumulation 4 a quarter)")
    parser.add_argument("--fisher-batches", type=int, default=4, help="Fisher utterances = this × batch size (tiny); base half")
    parser.add_argument("--fisher-repeats", type=int, default=3, help="timings of each Fisher path; the median counts")
    parser.add_argument("--freeze-feature-encoder", action=argparse.BooleanOptionalAction, default=True,
                        help="as adapt.freeze_feature_encoder in params.yaml and the thesis preset")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/ewc.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # Full float32 everywhere (cuDNN convolutions default to TF32 on Ampere+), so both Fisher paths can agree to 1e-5.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "memory_method": "cuda.max_memory_allocated" if device.type == "cuda" else "TorchDispatchMode storage count",
        "tf32": False, "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "args": {k: str(v) for k, v in vars(args).items()}, "targets": TARGETS, "models": {},
    }
    for size in args.sizes.split(","):
        batch = args.batch_tiny if size == "tiny" else args.batch_base
        steps, fisher_batches = (args.steps, args.fisher_batches) if size == "tiny" else \
            (max(2, args.steps // 2), max(1, args.fisher_batches // 2))
        report["models"][size] = bench_model(size, device, batch, args.audio_s, steps, fisher_batches * batch,
                                             args.fisher_repeats, args.freeze_feature_encoder)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other processes sharing the CPUs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(" | ".join(
        f"{size}: step ×{r['accumulation']['1']['derived_ratio']['after']:.3f}, at accumulation 4 "
        f"×{r['accumulation']['4']['derived_ratio']['after']:.3f} (per micro-batch: "
        f"×{r['accumulation']['4']['derived_ratio']['before']:.3f}), memory ×{r['memory_ratio']:.3f}, Fisher/train "
        f"{r['fisher_over_train_throughput']:.2f} ({r['fisher_best_path']}), batched≈looped {r['batched_vs_looped_max_rel']:.1e}"
        for size, r in report["models"].items()) + f" [{report['device']}, {report['threads']} threads] -> {args.out}")


if __name__ == "__main__":
    main()
