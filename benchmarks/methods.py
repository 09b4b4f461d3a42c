"""The continual-learning methods' cost on the tiny demo model and on a wav2vec2-base-sized random model: each
method's training step time over plain fine-tuning's, LwF's memory, and the averaging stage's run time.

A step is what the training core does per optimiser step (`forgetting.training.trainer`): forward, CTC loss plus the
regularisers' loss terms, backward, the regularisers' once-per-step gradients, AdamW. The variants take turns on the
same batch in one run (their order rotated every round), and the medians count:
- `plain`: no regulariser (λ = 0 EWC runs this too: its gradient adds 0, but it still costs `ewc`);
- `ewc`: the penalty with an importance (a random one: the cost does not depend on its values); `mas` runs exactly
  this code with its own importance, so it costs the same;
- `l2`: the penalty with F = 1 (no importance held);
- `lwf`: distillation towards a frozen copy of the model (its forward without gradients on every micro-batch);
- `lora`: adapters (params.yaml's rank, alpha and target modules) on a copy of the model, only they train.
Replay changes what is in a batch, not its size: its step costs what plain fine-tuning's does, plus the padding of
replayed clips that are not length-grouped with the target ones. Memory (LwF): the teacher's weights plus the rise in a
whole step's peak (CUDA: the allocator's count; CPU: the storages ops create, as in `benchmarks/ewc.py`).

    python -m benchmarks.methods [--device cuda] [--sizes tiny,base] ...   → reports/bench/methods.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from benchmarks.ewc import COMMON, CONFIGS, collate, make_batch, peak_extra_bytes, timed
from forgetting.methods.averaging import average_weights
from forgetting.methods.distillation import Distillation
from forgetting.methods.lora import add_lora
from forgetting.methods.penalty import EWCPenalty
from forgetting.params import load_params
from forgetting.training.regulariser import Regulariser

VARIANTS = ("plain", "ewc", "l2", "lwf", "lora")


class Variant:
    """A model, its optimizer and its regularisers: one training step as the core takes it."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, regularisers: Sequence[Regulariser]) -> None:
        self.model, self.optimizer, self.regularisers = model, optimizer, list(regularisers)

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(**batch)
        terms = [t for r in self.regularisers if (t := r.loss(self.model, batch, out.logits)) is not None]
        (out.loss + sum(terms)).backward()
        for regulariser in self.regularisers:
            regulariser.add_gradient(self.model, 1.0)
        self.optimizer.step()


def param_bytes(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)


def bench_model(size: str, device: torch.device, batch_size: int, audio_s: float, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**COMMON, **CONFIGS[size])).to(device).train()
    model.freeze_feature_encoder()  # as adapt.freeze_feature_encoder
    lora_params = load_params(Path("params.yaml")).adapt.lora
    teacher = copy.deepcopy(model)
    adapted = add_lora(copy.deepcopy(model), lora_params.rank, lora_params.alpha, lora_params.dropout,
                       lora_params.target_modules)
    g = torch.Generator().manual_seed(1)
    importance = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters() if p.requires_grad}
    ewc, l2 = EWCPenalty(model, importance, lam=0.4), EWCPenalty(model, None, lam=0.4)
    del importance
    kd = Distillation(teacher, weight=1.0, temperature=2.0)
    full = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    variants = {"plain": Variant(model, full, []), "ewc": Variant(model, full, [ewc]), "l2": Variant(model, full, [l2]),
                "lwf": Variant(model, full, [kd]),
                "lora": Variant(adapted, torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-6), [])}
    batch = collate(make_batch(batch_size, audio_s, model.config.vocab_size, seed=2), device)
    for variant in variants.values():  # warm-up: optimizer states allocated, teacher moved
        variant.step(batch)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for i in range(rounds):
        order = VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]
        for name in order:
            times[name].append(timed(lambda v=variants[name]: v.step(batch), device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    peaks = {name: peak_extra_bytes(lambda v=variants[name]: v.step(batch), device) for name in ("plain", "lwf")}
    anchor, weights = {n: t.cpu() for n, t in teacher.state_dict().items()}, {n: t.cpu() for n, t in model.state_dict().items()}
    average_s = statistics.median(timed(lambda: average_weights(anchor, weights, 0.5), torch.device("cpu")) for _ in range(3))
    teacher_bytes = param_bytes(teacher)
    return {
        "params": sum(p.numel() for p in model.parameters()), "param_bytes": param_bytes(model),
        "trainable_params": {name: sum(p.numel() for p in v.model.parameters() if p.requires_grad)
                             for name, v in variants.items()},
        "batch_size": batch_size, "audio_s_max": audio_s, "rounds": rounds,
        "step_s": times, "step_s_median": medians,
        "step_time_over_plain": {name: medians[name] / medians["plain"] for name in VARIANTS},
        "lwf_teacher_bytes": teacher_bytes,
        "step_peak_extra_bytes": peaks,
        "lwf_added_bytes": teacher_bytes + max(peaks["lwf"] - peaks["plain"], 0),
        "lwf_added_over_param_bytes": (teacher_bytes + max(peaks["lwf"] - peaks["plain"], 0)) / param_bytes(model),
        "average_weights_s": average_s,
        "lora": {"rank": lora_params.rank, "alpha": lora_params.alpha, "target_modules": lora_params.target_modules},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="tiny,base", help=f"comma-separated, of {sorted(CONFIGS)}")
    parser.add_argument("--batch-tiny", type=int, default=8)
    parser.add_argument("--batch-base", type=int, default=4)
    parser.add_argument("--audio-s", type=float, default=2.0, help="longest utterance, seconds")
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per variant (tiny); base takes max(2, rounds // 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 leaves torch's default")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/methods.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "memory_method": "cuda.max_memory_allocated" if device.type == "cuda" else "TorchDispatchMode storage count",
        "load_average_before": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}, "models": {},
    }
    start = time.perf_counter()
    for size in args.sizes.split(","):
        batch, rounds = (args.batch_tiny, args.rounds) if size == "tiny" else (args.batch_base, max(2, args.rounds // 3))
        report["models"][size] = bench_model(size, device, batch, args.audio_s, rounds)
    report["wall_s"], report["load_average_after"] = time.perf_counter() - start, os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    summary = " | ".join(f"{size}: " + ", ".join(f"{name} ×{r['step_time_over_plain'][name]:.3f}" for name in VARIANTS[1:])
                         + f", lwf memory ×{r['lwf_added_over_param_bytes']:.2f} of the weights"
                         for size, r in report["models"].items())
    print(f"{summary} [{report['device']}, {report['threads']} threads] -> {args.out}")


if __name__ == "__main__":
    main()
