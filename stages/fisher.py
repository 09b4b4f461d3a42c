"""Stage `fisher`: the diagonal Fisher of the source task (Dutch) at the pretrained weights.

Uses `fisher.samples` utterances drawn with `seed` from the source train split, and gives a Fisher to exactly the
parameters that adapt will train (`adapt.freeze_feature_encoder`).
"""

import argparse
import random
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from stages.corpus import read_split_tsv, write_json, write_split_tsv
from stages.ewc import estimate_fisher, save_fisher
from stages.figures import fisher_by_layer, plot_fisher_by_layer
from stages.model import apply_training_config, load_trained
from stages.params import load_params
from stages.train import CTCCollator, UtteranceDataset, file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the source language")
    parser.add_argument("--lang", default="nl", help="corpus language folder holding the clips")
    parser.add_argument("--out", type=Path, required=True, help="folder for fisher.safetensors and utterances.tsv")
    parser.add_argument("--summary", type=Path, required=True, help="metrics JSON: what the Fisher is")
    parser.add_argument("--layers", type=Path, required=True, help="per-layer statistics JSON")
    parser.add_argument("--figure", type=Path, required=True, help="Fisher mass by layer, PNG")
    args = parser.parse_args()
    params = load_params()
    fp = params.fisher

    train = read_split_tsv(args.train)
    if len(train) < fp.samples:
        raise SystemExit(f"fisher.samples = {fp.samples}, but {args.train} holds only {len(train)} utterances")
    chosen = sorted(random.Random(params.seed).sample(train, fp.samples), key=lambda u: -u.duration_s)  # less padding
    model, processor = load_trained(args.model)
    apply_training_config(model, params.adapt)  # the trainable set of adapt decides who gets a Fisher
    dataset = UtteranceDataset(chosen, Path(params.data.corpus) / args.lang / "clips", processor)
    batches = DataLoader(dataset, batch_size=fp.batch_size, collate_fn=CTCCollator())

    start = time.perf_counter()
    fisher = estimate_fisher(model, batches, kind=fp.kind, draws=fp.draws, batch_size=fp.batch_size,
                             normalize=fp.normalize, samples=fp.samples,
                             generator=torch.Generator().manual_seed(params.seed), progress=True)
    elapsed_s = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    write_split_tsv(args.out / "utterances.tsv", chosen, extra=("duration_s",))
    save_fisher(args.out / "fisher.safetensors", fisher.tensors, fisher.metadata(file_sha256(args.model / "model.safetensors")))
    layers = fisher_by_layer(fisher.tensors)
    write_json(args.layers, layers)
    write_json(args.summary, {
        "kind": fisher.kind, "samples": fisher.samples, "draws": fisher.draws, "normalize": fisher.normalize,
        "scale": fisher.scale, "ctc_loss_reduction": fisher.ctc_loss_reduction,
        "entries": sum(t.numel() for t in fisher.tensors.values()),
        "max": max(float(t.max()) for t in fisher.tensors.values()),
    })
    plot_fisher_by_layer(layers, f"Fisher ({fisher.kind}, {fisher.samples} utterances, normalised by {fisher.normalize})",
                         args.figure)
    print(f"fisher: {fisher.kind} Fisher of {len(fisher.tensors)} tensors from {fisher.samples} {args.lang} utterances "
          f"in {elapsed_s:.0f} s ({fisher.samples / elapsed_s:.1f} utt/s, batch {fp.batch_size}), "
          f"scale {fisher.scale:.3g} ({fisher.normalize}) -> {args.out}")


if __name__ == "__main__":
    main()
