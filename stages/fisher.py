"""Stage `fisher`: the diagonal Fisher of the source task (Dutch) at the pretrained weights.

Uses `fisher.samples` utterances drawn with `seed` from the source train split, and gives a Fisher to exactly the
parameters that adapt will train (`adapt.freeze_feature_encoder`).
"""

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgetting.batching import CTCCollator, UtteranceDataset
from forgetting.corpus import read_split_tsv, write_split_tsv
from forgetting.figures import plot_fisher_by_layer
from forgetting.fisher import choose_utterances, estimate_fisher, fisher_by_layer, save_fisher
from forgetting.io import file_sha256, write_json
from forgetting.layout import clips_dir, weights_file
from forgetting.model import apply_training_config, load_trained
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the source language")
    parser.add_argument("--lang", required=True, help="corpus language folder holding the clips")
    parser.add_argument("--out", type=Path, required=True, help="folder for fisher.safetensors and utterances.tsv")
    parser.add_argument("--summary", type=Path, required=True, help="metrics JSON: what the Fisher is")
    parser.add_argument("--layers", type=Path, required=True, help="per-layer statistics JSON")
    parser.add_argument("--figure", type=Path, required=True, help="Fisher mass by layer, PNG")
    args, params = cli.start(parser)
    fp = params.fisher

    try:
        chosen = choose_utterances(read_split_tsv(args.train), fp.samples, params.seed)
    except ValueError as err:
        raise SystemExit(f"fisher: {args.train}: {err}") from err
    model, processor = load_trained(args.model)
    apply_training_config(model, params.adapt)  # the trainable set of adapt decides who gets a Fisher
    dataset = UtteranceDataset(chosen, clips_dir(params.data.corpus, args.lang), processor)
    batches = DataLoader(dataset, batch_size=fp.batch_size, collate_fn=CTCCollator())

    start = time.perf_counter()
    fisher = estimate_fisher(model, batches, kind=fp.kind, draws=fp.draws, batch_size=fp.batch_size,
                             normalize=fp.normalize, samples=fp.samples,
                             generator=torch.Generator().manual_seed(params.seed), progress=True)
    elapsed_s = time.perf_counter() - start

    write_split_tsv(args.out / "utterances.tsv", chosen, extra=("duration_s",))
    save_fisher(args.out / "fisher.safetensors", fisher.tensors, fisher.metadata(file_sha256(weights_file(args.model))))
    layers = fisher_by_layer(fisher.tensors)
    write_json(args.layers, layers)
    write_json(args.summary, fisher.summary())
    plot_fisher_by_layer(layers, f"Fisher ({fisher.kind}, {fisher.samples} utterances, normalised by {fisher.normalize})",
                         args.figure)
    print(f"fisher: {fisher.kind} Fisher of {len(fisher.tensors)} tensors from {fisher.samples} {args.lang} utterances "
          f"in {elapsed_s:.0f} s ({fisher.samples / elapsed_s:.1f} utt/s, batch {fp.batch_size}), "
          f"scale {fisher.scale:.3g} ({fisher.normalize}) -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
