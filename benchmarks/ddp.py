"""Data-parallel training on the CPU: the tiny model's training throughput with 2 gloo processes against 1 process,
at the same effective batch, in one run.

    python -m benchmarks.ddp [--steps 30] [--warmup 10] [--rounds 2] [--effective-batch 8]   -> reports/bench/ddp.json

Every configuration is started by `torchrun --standalone` and trains with `forgetting.training.trainer.train_ctc` (the pretrain
params of params.yaml, no regulariser): 1 process with as many torch threads as the machine has cores, 1 process
with 1 thread, and 2 processes with 1 thread each (torchrun's default), each process taking effective batch /
processes utterances per step. A callback times every optimiser step from the end of the previous one (loading and
decoding the clips inline, forward, backward, the gradients' all-reduce, AdamW). The configurations run one after
the other, `--rounds` times (so that a busy spell of a shared machine hits them all); the median over all rounds of
the steps after `--warmup` gives steps/s and samples/s. The clips are the validated Dutch train split when the
pipeline has made it, else a seeded demo corpus synthesised into a temporary folder; the JSON says which.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from transformers import TrainerCallback

from forgetting.data.audio import TARGET_SR, load_clip_16k
from forgetting.data.corpus import Utterance, build_vocab, read_corpus_tsv, read_split_tsv, write_split_tsv
from forgetting.demo.synth import write_demo_corpus
from forgetting.io import write_json
from forgetting.layout import clips_dir
from forgetting.params import load_params
from forgetting.training import distributed
from forgetting.training.batching import Split
from forgetting.training.model import build_model, build_processor
from forgetting.training.trainer import train_ctc

VALIDATED = Path("data/validated/nl/train.tsv")
DEV_CLIPS = 8
SYNTH_CLIPS = 160
# name -> (processes, OMP_NUM_THREADS per process; None: torch's choice, all cores)
CONFIGS = {"1 process, all threads": (1, None), "1 process, 1 thread": (1, "1"), "2 processes, 1 thread each": (2, "1")}


class StepTimer(TrainerCallback):
    """The wall time of every optimiser step, from the end of the previous step (or the start of training) to its end."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def corpus(root: Path, seed: int) -> tuple[list[Utterance], Path, str]:
    """The utterances (with duration_s) and clips folder to train on, and where they come from."""
    params = load_params()
    if VALIDATED.is_file():
        return read_split_tsv(VALIDATED), clips_dir(params.data.source("nl")), str(VALIDATED)
    summary = write_demo_corpus(root, "nl", SYNTH_CLIPS, speakers=4, seed=seed)
    broken, clips = {d.path for d in summary.defects}, root / "nl" / "clips"
    rows = [dataclasses.replace(u, duration_s=len(load_clip_16k(clips / u.path)) / TARGET_SR)
            for u in read_corpus_tsv(root / "nl" / "validated.tsv") if u.path not in broken]
    return rows, clips, f"{len(rows)} demo clips synthesised in a temporary folder ({VALIDATED} missing)"


def worker(plan_path: Path) -> None:
    """One process of a configuration (started by torchrun): train, and on process 0 write the step times."""
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    params = load_params()
    processes = distributed.world_size()
    train_params = dataclasses.replace(params.pretrain, max_steps=plan["steps"], epochs=None, eval_steps=plan["steps"],
                                       batch_size=plan["effective_batch"] // processes,
                                       effective_batch_size=plan["effective_batch"], dataloader_workers=0)
    root, clips = Path(plan["root"]), Path(plan["clips"])
    processor = build_processor(root / "vocab.json")
    model = build_model(params.model, processor.tokenizer.get_vocab(), params.seed)
    timer = StepTimer()
    train, dev = (Split(read_split_tsv(root / f"{split}.tsv"), clips) for split in ("train", "dev"))
    train_ctc(model, processor, train, {"nl": dev}, train_params, "bench", root / f"model-{processes}",
              root / f"reports-{processes}", root / "checkpoints", f"ddp-bench-{processes}-{plan['threads']}".ljust(16, "-"),
              keep="last", extra_callbacks=[timer])
    if distributed.is_main():
        state = PartialState()
        write_json(Path(plan["out"]), {"step_s": timer.seconds, "torch_threads": torch.get_num_threads(),
                                       "distributed_type": str(state.distributed_type), "backend": state.backend,
                                       "processes": state.num_processes, "batch_per_process": train_params.batch_size})


def launch(plan: dict, processes: int, threads: str | None) -> dict:
    """Run one configuration through torchrun; its process 0's step times and settings."""
    plan_path = Path(plan["root"]) / f"plan-{processes}-{threads}.json"
    plan = {**plan, "threads": threads or "all", "out": str(plan_path.with_suffix(".out.json"))}
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "benchmarks.ddp", "--worker", str(plan_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-5000:]}")
    return json.loads(Path(plan["out"]).read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="optimiser steps before the timed ones")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration, alternating")
    parser.add_argument("--effective-batch", type=int, default=8, help="utterances per optimiser step, all processes")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # set by the launch: be one process of a run
    parser.add_argument("--out", type=Path, default=Path("reports/bench/ddp.json"))
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    load_at_start, params = os.getloadavg()[0], load_params()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        utterances, clips, source = corpus(root / "corpus", params.seed)
        write_json(root / "vocab.json", build_vocab(u.text for u in utterances))
        write_split_tsv(root / "dev.tsv", utterances[:DEV_CLIPS], extra=("duration_s",))
        write_split_tsv(root / "train.tsv", utterances[DEV_CLIPS:], extra=("duration_s",))
        plan = {"root": str(root), "clips": str(clips), "steps": args.warmup + args.steps,
                "effective_batch": args.effective_batch}
        runs = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, (processes, threads) in CONFIGS.items():
                runs[name].append(launch(plan, processes, threads))
    configs = {}
    for name, rounds in runs.items():
        step_s = statistics.median(s for run in rounds for s in run["step_s"][args.warmup:])
        configs[name] = {**{k: v for k, v in rounds[0].items() if k != "step_s"}, "step_s_median": round(step_s, 4),
                         "steps_per_s": round(1 / step_s, 3), "samples_per_s": round(args.effective_batch / step_s, 2),
                         "step_s": [[round(s, 4) for s in run["step_s"]] for run in rounds]}
    two = configs["2 processes, 1 thread each"]["samples_per_s"]
    report = {
        "source": source, "train_clips": len(utterances) - DEV_CLIPS,
        "mean_clip_s": round(statistics.fmean(u.duration_s or 0 for u in utterances[DEV_CLIPS:]), 3),
        "effective_batch_size": args.effective_batch, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "rounds": args.rounds,
        "configs": configs,
        "two_processes_over_one": {name: round(two / c["samples_per_s"], 3)
                                   for name, c in configs.items() if c["processes"] == 1},
        "device": f"cpu ({platform.machine()})", "cpus_available": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "load_average_1min_at_start": round(load_at_start, 2), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    write_json(args.out, report)
    print(" | ".join(f"{name}: {c['samples_per_s']} samples/s ({c['step_s_median']} s/step)" for name, c in configs.items())
          + f" -> {args.out}")


if __name__ == "__main__":
    main()
