"""Benchmark: what the reproducible CPU mode costs, pin by pin, against the unpinned mode, in one run.

    python -m benchmarks.reproducible [--steps 40] [--rounds 2] [--out reports/bench/reproducible.json]

Needs the validated Dutch train split (`dvc repro` first). Each setting runs in a process of its own (ATen, MKL and
OpenMP read their choices from the environment once): the same length-grouped batches of the train split,
the demo model from `model` params, `--steps` timed training steps (forward, CTC loss, backward, AdamW) after 3 untimed
ones. The settings add the pins one at a time, from torch's own choices to the whole mode, and the rounds alternate
them, so that a slow minute of the machine does not land on one setting. Each also hashes the weights it trained:
settings with the same hash round alike, and three more settings (one round) show whether the thread count, oneDNN's
instruction set and `torch.use_deterministic_algorithms` change the weights.
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgetting.data.corpus import read_split_tsv
from forgetting.io import write_json
from forgetting.layout import SOURCE, clips_dir
from forgetting.machine import ATEN_KERNELS, MKL_BRANCH, THREAD_VARIABLES, cpu_model
from forgetting.params import load_params
from forgetting.training.batching import CTCCollator, LengthGroupedEpochSampler, UtteranceDataset
from forgetting.training.model import apply_training_config, build_model, build_processor


@dataclass(frozen=True)
class Setting:
    """One way to run the training steps: `pins` over an environment without any (`THREADS` stands for the mode's
    thread count), oneDNN on or off, and `torch.use_deterministic_algorithms`; `against`: the setting whose weights
    it is compared with."""

    name: str
    pins: dict[str, str]
    onednn: bool = True
    deterministic: bool = False
    against: str | None = None


THREADS = "<cpu_threads>"
PINNED = {"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS, "ATEN_CPU_CAPABILITY": ATEN_KERNELS,
          "MKL_CBWR": MKL_BRANCH}
# The cost: the pins added one at a time, from torch's own choices to the whole reproducible mode.
THREADED = {"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}
COST = [
    Setting("unpinned", {}),
    Setting("threads", THREADED, against="unpinned"),
    Setting("threads + aten_avx2", THREADED | {"ATEN_CPU_CAPABILITY": ATEN_KERNELS}, against="threads"),
    Setting("threads + aten_avx2 + onednn_off", THREADED | {"ATEN_CPU_CAPABILITY": ATEN_KERNELS}, onednn=False,
            against="threads + aten_avx2"),
    Setting("reproducible", PINNED, onednn=False, against="threads + aten_avx2 + onednn_off"),
]
# Whether a pin matters where the cost settings cannot show it (README's table), in the weights' hash.
EVIDENCE = [
    Setting("reproducible, 1 thread", PINNED | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, onednn=False,
            against="reproducible"),
    Setting("unpinned, oneDNN at AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, against="unpinned"),
    Setting("reproducible + deterministic algorithms", PINNED, onednn=False, deterministic=True, against="reproducible"),
]
VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", *THREAD_VARIABLES)


def child(steps: int, onednn: bool, deterministic: bool) -> dict:
    """Time `steps` training steps in this process, as its environment pins them."""
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.mkldnn.enabled = onednn
    params = load_params()
    train_params = params.pretrain
    processor = build_processor(Path("data/vocab.json"))
    dataset = UtteranceDataset(read_split_tsv(Path("data/validated/nl/train.tsv")), clips_dir(params.data.source(SOURCE)),
                               processor)
    sampler = LengthGroupedEpochSampler(dataset.lengths, train_params.batch_size, train_params.seed)
    batches = []
    for batch in DataLoader(dataset, batch_size=train_params.batch_size, sampler=sampler, collate_fn=CTCCollator()):
        batches.append({k: batch[k] for k in ("input_values", "attention_mask", "labels")})
        if len(batches) == steps + 3:
            break
    model = build_model(params.model, processor.tokenizer.get_vocab(), train_params.seed)
    apply_training_config(model, train_params)
    optimizer = torch.optim.AdamW(model.parameters(), train_params.lr)
    model.train()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= 3:
            times.append(time.perf_counter() - start)
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return {"step_s": times, "weights_sha256": weights, "threads": torch.get_num_threads(),
            "kernels": torch.backends.cpu.get_cpu_capability(), "onednn": torch.backends.mkldnn.enabled}


def run_setting(setting: Setting, steps: int, threads: int) -> dict:
    """One setting's child process: this environment without any pin, then the setting's pins."""
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    pins = {k: str(threads) if v == THREADS else v for k, v in setting.pins.items()}
    flags = [*([] if setting.onednn else ["--onednn-off"]), *(["--deterministic"] if setting.deterministic else [])]
    done = subprocess.run([sys.executable, "-m", "benchmarks.reproducible", "--child", "--steps", str(steps), *flags],
                          env=clean | pins, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1]) | {"pins": pins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per setting and round")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the settings, alternating them")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/reproducible.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--onednn-off", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.steps, not args.onednn_off, args.deterministic)))
        return
    if not Path("data/validated/nl/train.tsv").is_file():
        raise SystemExit("bench reproducible: data/validated/nl/train.tsv is missing; run `dvc repro` first")
    threads = load_params().resources.cpu_threads or 2
    load_at_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {setting.name: [] for setting in COST + EVIDENCE}
    for round_ in range(args.rounds):
        for setting in COST + (EVIDENCE if round_ == 0 else []):  # the evidence is in the hashes: one round
            runs[setting.name].append(run_setting(setting, args.steps, threads))
            print(f"bench reproducible: round {round_ + 1}, {setting.name}: "
                  f"{statistics.median(runs[setting.name][-1]['step_s']):.4f} s a step", flush=True)
    base = statistics.median(t for run in runs["unpinned"] for t in run["step_s"])
    settings = {}
    for name, results in runs.items():
        median = statistics.median(t for run in results for t in run["step_s"])
        settings[name] = {"pins": results[0]["pins"], "onednn": results[0]["onednn"], "threads": results[0]["threads"],
                          "kernels": results[0]["kernels"], "step_s_median": round(median, 4),
                          "step_time_over_unpinned": round(median / base, 3),
                          "round_medians_s": [round(statistics.median(r["step_s"]), 4) for r in results],
                          "weights_sha256": sorted({r["weights_sha256"] for r in results})}
    model, _ = cpu_model()
    same = {f"{s.name} = {s.against}": settings[s.name]["weights_sha256"] == settings[s.against]["weights_sha256"]
            for s in COST + EVIDENCE if s.against}
    report = {"steps": args.steps, "rounds": args.rounds, "settings": settings, "cpu": model,
              "same_weights": same,
              "cores": os.cpu_count(), "load_average_1min_at_start": round(load_at_start, 2)}
    write_json(args.out, report)
    cost = settings["reproducible"]["step_time_over_unpinned"]
    print(f"bench reproducible: the reproducible mode takes {cost}x the unpinned step time -> {args.out}")


if __name__ == "__main__":
    main()
