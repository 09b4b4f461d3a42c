"""Stage `adapt`: fine-tune the pretrained model (θ*) on the target language (German) with the method of
`adapt.method` (`forgetting.methods.registry`): the EWC, MAS or L2 penalty (λ/2)·Σ Ω·(θ−θ*)², distillation towards the
pretrained model (lwf), or low-rank adapters folded back in at the end (lora); λ = 0 is plain fine-tuning. With
`adapt.replay_fraction` > 0, part of every batch is source-language (Dutch) training utterances. The source dev split
is evaluated alongside the target's (the forgetting curve); `adapt.keep` picks the checkpoint written."""

from pathlib import Path

from transformers import set_seed

from forgetting.data.corpus import read_split_tsv
from forgetting.layout import SOURCE, TARGET, clips_dir, weights_file
from forgetting.methods.registry import build_method
from forgetting.methods.replay import choose_replay, write_replay_list
from forgetting.training import distributed
from forgetting.training.batching import Split
from forgetting.training.model import apply_training_config, load_trained
from forgetting.training.resume import stage_run_key
from forgetting.training.trainer import train_ctc
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder (θ*)")
    parser.add_argument("--importance", type=Path, required=True, help="importance.safetensors of the importance stage")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the target language")
    parser.add_argument("--dev", type=Path, required=True, help="validated dev.tsv of the target language")
    parser.add_argument("--source-train", type=Path, required=True, help="validated train.tsv of the source (replay)")
    parser.add_argument("--source-dev", type=Path, required=True, help="validated dev.tsv of the source (forgetting curve)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--reports", type=Path, required=True, help="dvclive folder for curves and metrics.json")
    parser.add_argument("--replay-list", type=Path, required=True, help="TSV of the source utterances replay draws from")
    cli.add_checkpoints(parser)
    cli.add_provenance(parser)
    args, params = cli.start(parser)
    cli.pin(params.resources)
    distributed.init()  # before the Trainer, which then uses this process group
    ap = params.adapt

    model, processor = load_trained(args.model)
    set_seed(ap.seed)  # the mask embedding, when masking adds one, starts from the training seed
    apply_training_config(model, ap)  # freeze first: a penalty anchors exactly the parameters that train
    method = build_method(ap, model, args.model, args.importance)
    target, source = clips_dir(params.data.source(TARGET)), clips_dir(params.data.source(SOURCE))
    train, dev = Split(read_split_tsv(args.train), target), Split(read_split_tsv(args.dev), target)
    replay = None
    if ap.replay_fraction > 0:
        replay = Split(choose_replay(read_split_tsv(args.source_train), ap.replay_samples, params.seed), source)
    key = stage_run_key(params, "adapt", [args.train, args.dev, args.source_train, args.source_dev,
                                          weights_file(args.model), args.importance])
    result = train_ctc(method.model, processor, train, {TARGET: dev, SOURCE: Split(read_split_tsv(args.source_dev), source)},
                       ap, "adapt", args.out, args.reports, args.checkpoints, key, keep=ap.keep,
                       regularisers=method.regularisers, replay=replay, replay_fraction=ap.replay_fraction,
                       export=method.export)
    if distributed.is_main():
        cli.write_provenance(args.provenance, params.resources)
        write_replay_list(args.replay_list, replay.utterances if replay is not None else [])
        replayed = f", {ap.replay_fraction:g} of each batch replayed" if replay is not None else ""
        print(f"adapt: {len(train.utterances)} {TARGET} utterances, {method.description}{replayed}, "
              f"{result.describe()} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
