"""Benchmark: training samples per second of the CTC core, against data loading alone (decode + resample +
normalise + collate through the same Dataset, collator and DataLoader), to show the loader keeps up.

    python -m benchmarks.train [--train data/validated/nl/train.tsv] [--steps 60]

Uses the source language's clips folder (`data`), the `pretrain` params (batch size, loader workers, lr) and `model`
params. When the validated train split is missing (the pipeline has not run), a small Dutch demo corpus is synthesised into a
temporary folder, and the JSON says so. Training runs `train_ctc` for `--steps` optimiser steps with one
evaluation (16 dev clips) and one checkpoint at the end, both inside the Trainer's samples/s.
"""

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgetting.data.audio import TARGET_SR, load_clip_16k
from forgetting.data.corpus import Utterance, build_vocab, read_corpus_tsv, read_split_tsv
from forgetting.data.validation import resolve_workers
from forgetting.demo.synth import write_demo_corpus
from forgetting.io import write_json
from forgetting.layout import SOURCE, clips_dir, corpus_clips, corpus_metadata
from forgetting.params import load_params
from forgetting.training.batching import CTCCollator, Split, UtteranceDataset
from forgetting.training.model import build_model, build_processor
from forgetting.training.trainer import train_ctc

DEV_CLIPS = 16
SYNTH_CLIPS = 160


def synthesised_split(root: Path, seed: int) -> tuple[list[Utterance], Path]:
    """A Dutch demo corpus in `root`, its readable rows with decoded durations, and its clips folder."""
    summary = write_demo_corpus(root, "nl", SYNTH_CLIPS, speakers=4, seed=seed)
    broken = {d.path for d in summary.defects}
    clips = corpus_clips(root / "nl")
    rows = [u for u in read_corpus_tsv(corpus_metadata(root / "nl")) if u.path not in broken and u.text]
    rows = [dataclasses.replace(u, duration_s=len(load_clip_16k(clips / u.path)) / TARGET_SR) for u in rows]
    return [u for u in rows if u.duration_s <= 10.0], clips


def loading_rate(dataset: UtteranceDataset, batch_size: int, workers: int) -> float:
    """Samples per second through DataLoader + collator, best of two passes (the first also warms the page cache)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=CTCCollator(), num_workers=workers)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return len(dataset) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=Path("data/validated/nl/train.tsv"))
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of the timed training run")
    parser.add_argument("--load-clips", type=int, default=256, help="clips read by the loading benchmark")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/train.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    params = load_params()
    train_params = dataclasses.replace(params.pretrain, max_steps=args.steps, epochs=None, eval_steps=args.steps)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.train.is_file():
            utterances, clips, source = read_split_tsv(args.train), clips_dir(params.data.source(SOURCE)), str(args.train)
        else:
            utterances, clips = synthesised_split(tmp / "corpus", params.seed)
            source = f"{len(utterances)} demo clips synthesised in a temporary folder ({args.train} missing)"
        write_json(tmp / "vocab.json", build_vocab(u.text for u in utterances))
        processor = build_processor(tmp / "vocab.json")
        dev, train = utterances[:DEV_CLIPS], utterances[DEV_CLIPS:]

        sample = UtteranceDataset(train[: args.load_clips], clips, processor)
        workers = sorted({0, train_params.dataloader_workers})
        loading = {str(w): round(loading_rate(sample, train_params.batch_size, w), 1) for w in workers}

        model = build_model(params.model, processor.tokenizer.get_vocab(), train_params.seed)
        start = time.perf_counter()
        result = train_ctc(model, processor, Split(train, clips), {SOURCE: Split(dev, clips)}, train_params, "bench",
                           tmp / "model", tmp / "reports", tmp / "checkpoints", "bench" * 13)
        wall_s = time.perf_counter() - start

    samples = args.steps * train_params.effective_batch_size
    report = {
        "source": source,
        "train_clips": len(train),
        "mean_clip_s": round(sum(u.duration_s or 0 for u in train) / len(train), 3),
        "batch_size": train_params.batch_size,
        "effective_batch_size": train_params.effective_batch_size,
        "steps": args.steps,
        "train_samples_per_s": round(result.timings["samples_per_second"], 2),
        "train_seconds_per_step": round(samples / result.timings["samples_per_second"] / args.steps, 4),
        "train_wall_s": round(wall_s, 2),  # includes model set-up, one evaluation and the final save
        "loading_clips": len(sample),
        "loading_samples_per_s": loading,  # by DataLoader worker count
        "loading_over_training": round(max(loading.values()) / result.timings["samples_per_second"], 1),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpus_available": resolve_workers(0),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_start": round(load_at_start, 2),  # other processes sharing the CPUs
    }
    write_json(args.out, report)
    print(f"bench train: {report['train_samples_per_s']} samples/s training ({report['train_seconds_per_step']} s/step at "
          f"batch {train_params.batch_size}), loading alone {loading} samples/s by workers -> {args.out}")


if __name__ == "__main__":
    main()
