"""Benchmark: where the demo's pretraining time goes, and the tiny model's front end that decides most of it.

    python -m benchmarks.demo [--steps 30] [--out reports/bench/demo.json]

Needs the validated Dutch train and dev splits (`dvc repro` first). On the same length-grouped batches of the train
split (the `pretrain` batch size) it times, in one run, the training step (forward, CTC loss, backward, AdamW) of the
tiny model with each front end of FRONT_ENDS, and lists the operators that take the most time in that step
(`torch.profiler`, self CPU time over 5 steps); then, for the front end in params.yaml, the rest of a pretraining step:
decoding and collating one batch in the training process, the share of padded samples in an epoch's length-grouped
batches, and one dev evaluation (`transcribe`, at the model's eval batch size). Last, the whole pretraining as
`pretrain` runs it, estimated from these parts: steps x (load + step) + evaluations x dev evaluation.
"""

import argparse
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgetting.data.corpus import read_split_tsv
from forgetting.data.validation import resolve_workers
from forgetting.io import write_json
from forgetting.layout import SOURCE, clips_dir
from forgetting.params import load_params
from forgetting.training.batching import CTCCollator, LengthGroupedEpochSampler, UtteranceDataset
from forgetting.training.decoding import transcribe
from forgetting.training.model import apply_training_config, build_model, build_processor

# The tiny model's feature encoder: the old default (XLS-R's seven layer-normed layers at stride 5 first), the same
# at stride 10 first (six layers, the same 320 samples a frame), and that with wav2vec2-base's group norm.
SEVEN = {"conv_dim": [64] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2]}
SIX = {"conv_dim": [64] * 6, "conv_stride": [10, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 2, 2]}
FRONT_ENDS = {
    "layer_norm_7_layers": {**SEVEN, "feat_extract_norm": "layer"},
    "layer_norm_6_layers": {**SIX, "feat_extract_norm": "layer"},
    "group_norm_6_layers": {**SIX, "feat_extract_norm": "group"},
}
PROFILED_STEPS, TOP_OPERATORS = 5, 8


def step_seconds(model, batches: list[dict], lr: float, warmup: int = 3) -> list[float]:
    """Seconds of each training step (AdamW at `lr`) over `batches` after `warmup` untimed ones."""
    optimizer = torch.optim.AdamW(model.parameters(), lr)
    model.train()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        inputs = {k: batch[k] for k in ("input_values", "attention_mask", "labels")}
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def top_operators(model, batches: list[dict], lr: float) -> list[dict]:
    """The operators with the most self CPU time over PROFILED_STEPS training steps, with their share of it."""
    with torch.profiler.profile() as prof:
        step_seconds(model, batches[:PROFILED_STEPS], lr, warmup=0)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "share": round(e.self_cpu_time_total / total, 3),
             "ms_per_step": round(e.self_cpu_time_total / 1000 / PROFILED_STEPS, 2)} for e in events[:TOP_OPERATORS]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=Path("data/validated/nl/train.tsv"))
    parser.add_argument("--dev", type=Path, default=Path("data/validated/nl/dev.tsv"))
    parser.add_argument("--vocab", type=Path, default=Path("data/vocab.json"))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per front end")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/demo.json"))
    args = parser.parse_args()
    for path in (args.train, args.dev, args.vocab):
        if not path.is_file():
            raise SystemExit(f"bench demo: {path} is missing; run `dvc repro` first")
    load_at_start = os.getloadavg()[0]
    params = load_params()
    train_params = params.pretrain
    processor = build_processor(args.vocab)
    clips = clips_dir(params.data.source(SOURCE))
    dataset = UtteranceDataset(read_split_tsv(args.train), clips, processor)
    sampler = LengthGroupedEpochSampler(dataset.lengths, train_params.batch_size, train_params.seed)
    loader = DataLoader(dataset, batch_size=train_params.batch_size, sampler=sampler, collate_fn=CTCCollator())
    start, batches = time.perf_counter(), []
    for batch in loader:
        batches.append(batch)
        if len(batches) == args.steps + 3:
            break
    load_s = (time.perf_counter() - start) / len(batches)
    order = list(sampler)  # one epoch's batches, from the clips' lengths alone
    groups = [[dataset.lengths[i] for i in order[k:k + train_params.batch_size]]
              for k in range(0, len(order), train_params.batch_size)]
    padding = 1 - sum(map(sum, groups)) / sum(max(g) * len(g) for g in groups)

    front_ends = {}
    for name, front_end in FRONT_ENDS.items():
        model_params = dataclasses.replace(params.model, config={**params.model.config, **front_end})
        model = build_model(model_params, processor.tokenizer.get_vocab(), train_params.seed)
        apply_training_config(model, train_params)
        times = step_seconds(model, batches, train_params.lr)
        front_ends[name] = {"config": front_end, "parameters": sum(p.numel() for p in model.parameters()),
                            "step_s_median": round(statistics.median(times), 4),
                            "top_operators": top_operators(model, batches, train_params.lr)}
        print(f"bench demo: {name}: {front_ends[name]['step_s_median']} s a step")
    base = front_ends["layer_norm_7_layers"]["step_s_median"]
    for entry in front_ends.values():
        entry["step_time_over_layer_norm_7_layers"] = round(entry["step_s_median"] / base, 3)

    current = next((name for name, f in FRONT_ENDS.items() if all(params.model.config.get(k) == v for k, v in f.items())),
                   None)
    model = build_model(params.model, processor.tokenizer.get_vocab(), train_params.seed)
    dev = read_split_tsv(args.dev)
    start = time.perf_counter()
    transcribe(model, processor, dev, clips, params.eval.batch_size, progress=False)
    dev_eval_s = time.perf_counter() - start
    step_s = front_ends[current]["step_s_median"] if current else None
    evaluations = train_params.max_steps // train_params.eval_steps if train_params.max_steps else None
    report = {
        "front_ends": front_ends,
        "params_front_end": current,
        "pretrain": {
            "batch_size": train_params.batch_size, "max_steps": train_params.max_steps,
            "eval_steps": train_params.eval_steps, "dataloader_workers": train_params.dataloader_workers,
            "load_batch_s": round(load_s, 4), "epoch_padding_fraction": round(padding, 4),
            "dev_utterances": len(dev), "dev_evaluation_s": round(dev_eval_s, 2),
            "estimated_s": (round(train_params.max_steps * (load_s + step_s) + evaluations * dev_eval_s)
                            if step_s and evaluations is not None else None),
        },
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus_available": resolve_workers(0),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_start": round(load_at_start, 2),
    }
    write_json(args.out, report)
    print(f"bench demo: pretrain estimated at {report['pretrain']['estimated_s']} s ({current}) -> {args.out}")


if __name__ == "__main__":
    main()
