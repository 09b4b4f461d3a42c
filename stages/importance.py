"""Stage `importance`: how much each weight matters to the source task (Dutch), at the pretrained weights.

The diagonal Fisher (`importance.fisher`, `importance.loss`) for EWC, or the MAS importance when `adapt.method` is
`mas`; from `importance.samples` utterances drawn with `seed` from the source train split; for exactly the
parameters that adapt will train (`adapt.freeze_feature_encoder`, and `adapt.mask_time_prob` and
`adapt.mask_feature_prob`, either of which makes the mask embedding a parameter). Under torchrun each process takes
its share of the utterances, their sums are added up, and process 0 writes the outputs.
"""

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from forgetting.data.corpus import read_split_tsv, write_split_tsv
from forgetting.evaluation.figures import plot_importance_by_layer
from forgetting.io import file_sha256, write_json
from forgetting.layout import clips_dir, weights_file
from forgetting.methods.fisher import choose_utterances, fisher_sums
from forgetting.methods.importance import importance_by_layer, normalised, save_importance
from forgetting.methods.mas import estimate_mas
from forgetting.training import distributed
from forgetting.training.batching import CTCCollator, UtteranceDataset
from forgetting.training.model import apply_training_config, load_trained
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the source language")
    parser.add_argument("--lang", required=True, help="the source language (its clips folder)")
    parser.add_argument("--out", type=Path, required=True, help="folder for importance.safetensors and utterances.tsv")
    parser.add_argument("--summary", type=Path, required=True, help="metrics JSON: what the importance is")
    parser.add_argument("--layers", type=Path, required=True, help="per-layer statistics JSON")
    parser.add_argument("--figure", type=Path, required=True, help="importance by layer, PNG")
    cli.add_provenance(parser)
    args, params = cli.start(parser)
    cli.pin(params.resources)
    ip, mas = params.importance, params.adapt.method == "mas"
    distributed.init()

    try:
        chosen = choose_utterances(read_split_tsv(args.train), ip.samples, params.seed)
    except ValueError as err:
        raise SystemExit(f"importance: {args.train}: {err}") from err
    model, processor = load_trained(args.model)
    model.to(distributed.device())
    apply_training_config(model, params.adapt)  # the trainable set of adapt decides who gets an importance
    mine = distributed.shard(len(chosen))
    dataset = UtteranceDataset([chosen[i] for i in mine], clips_dir(params.data.source(args.lang)), processor)
    batches = DataLoader(dataset, batch_size=ip.batch_size, collate_fn=CTCCollator())

    start = time.perf_counter()
    progress = distributed.is_main()
    if mas:
        sums, count = estimate_mas(model, batches, batch_size=ip.batch_size, samples=len(mine), progress=progress)
    else:
        sums, count = fisher_sums(model, batches, kind=ip.fisher, loss=ip.loss, draws=ip.draws, batch_size=ip.batch_size,
                                  samples=len(mine), seed=params.seed, positions=mine, progress=progress)
    total = torch.tensor(float(count), device=distributed.device())
    distributed.all_reduce_sum_([*sums.values(), total])  # every process's utterances, summed
    importance = normalised(sums, round(float(total)), ip.normalize, kind="mas" if mas else ip.fisher,
                            loss="" if mas else ip.loss, draws=1 if mas or ip.fisher == "empirical" else ip.draws,
                            ctc_loss_reduction=model.config.ctc_loss_reduction)
    elapsed_s = time.perf_counter() - start
    if not distributed.is_main():
        return

    write_split_tsv(args.out / "utterances.tsv", chosen, extra=("duration_s",))
    save_importance(args.out / "importance.safetensors", importance.tensors,
                    importance.metadata(file_sha256(weights_file(args.model))))
    layers = importance_by_layer(importance.tensors)
    write_json(args.layers, layers)
    write_json(args.summary, importance.summary())
    cli.write_provenance(args.provenance, params.resources)
    name = "MAS importance" if mas else f"{importance.kind} Fisher ({importance.loss})"
    plot_importance_by_layer(layers, f"{name}, {importance.samples} utterances, normalised by {importance.normalize}",
                             args.figure)
    print(f"importance: {name} of {len(importance.tensors)} tensors from {importance.samples} {args.lang} utterances "
          f"in {elapsed_s:.0f} s ({importance.samples / elapsed_s:.1f} utt/s, batch {ip.batch_size}, "
          f"{distributed.world_size()} process(es)), scale {importance.scale:.3g} ({importance.normalize}) -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
