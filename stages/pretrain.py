"""Stage `pretrain`: CTC fine-tuning of the start model (`model` params) on the source language's train split,
keeping the checkpoint with the best dev WER. Under torchrun (`resources.nproc_per_node` > 1) the Trainer runs
DistributedDataParallel and process 0 writes the outputs."""

from pathlib import Path

from forgetting.data.corpus import read_split_tsv
from forgetting.layout import clips_dir
from forgetting.training import distributed
from forgetting.training.batching import Split
from forgetting.training.model import build_model, build_processor, checkpoint_files
from forgetting.training.resume import stage_run_key
from forgetting.training.trainer import train_ctc
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the source language")
    parser.add_argument("--dev", type=Path, required=True, help="validated dev.tsv of the source language")
    parser.add_argument("--vocab", type=Path, required=True, help="vocab.json of the vocab stage")
    parser.add_argument("--lang", required=True, help="the source language (its clips folder)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (safetensors + processor)")
    parser.add_argument("--reports", type=Path, required=True, help="dvclive folder for curves and metrics.json")
    cli.add_checkpoints(parser)
    cli.add_provenance(parser)
    args, params = cli.start(parser)
    cli.pin(params.resources)
    distributed.init()  # before the Trainer, which then uses this process group

    clips = clips_dir(params.data.source(args.lang))
    train, dev = Split(read_split_tsv(args.train), clips), Split(read_split_tsv(args.dev), clips)
    processor = build_processor(args.vocab)
    model = build_model(params.model, processor.tokenizer.get_vocab(), params.pretrain.seed)
    key = stage_run_key(params, "pretrain", [args.train, args.dev, args.vocab, *checkpoint_files(params.model.name)])
    result = train_ctc(model, processor, train, {args.lang: dev}, params.pretrain, "pretrain", args.out, args.reports,
                       args.checkpoints, key)
    if distributed.is_main():
        cli.write_provenance(args.provenance, params.resources)
        print(f"pretrain: {len(train.utterances)} {args.lang} utterances, {result.describe()} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
