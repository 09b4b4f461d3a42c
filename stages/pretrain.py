"""Stage `pretrain`: CTC fine-tuning of the start model (`model` params) on the source language's train split,
keeping the checkpoint with the best dev WER."""

import argparse
import dataclasses
import logging
from pathlib import Path

from stages.corpus import read_split_tsv
from stages.model import build_model, build_processor, checkpoint_files
from stages.params import load_params
from stages.train import core_code_files, run_key, train_ctc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the source language")
    parser.add_argument("--dev", type=Path, required=True, help="validated dev.tsv of the source language")
    parser.add_argument("--vocab", type=Path, required=True, help="vocab.json of the vocab stage")
    parser.add_argument("--lang", default="nl", help="corpus language folder holding the clips the splits name")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (safetensors + processor)")
    parser.add_argument("--reports", type=Path, required=True, help="dvclive folder for curves and metrics.json")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resumable checkpoints, not a DVC output")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_params()
    train_utts, dev_utts = read_split_tsv(args.train), read_split_tsv(args.dev)
    processor = build_processor(args.vocab)
    model = build_model(params.model, len(processor.tokenizer), params.seed)
    key = run_key(
        {"pretrain": dataclasses.asdict(params.pretrain), "model": dataclasses.asdict(params.model), "seed": params.seed,
         "corpus": params.data.corpus},
        [args.train, args.dev, args.vocab, *checkpoint_files(params.model.name), *core_code_files(), Path(__file__)],
    )
    clips_dir = Path(params.data.corpus) / args.lang / "clips"
    result = train_ctc(model, processor, train_utts, dev_utts, clips_dir, params.pretrain, "pretrain", params.seed,
                       args.out, args.reports, args.checkpoints, key)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step is not None else ""
    print(f"pretrain: {result.steps} steps on {len(train_utts)} {args.lang} utterances{resumed}; best dev WER "
          f"{result.best_dev_wer:.3f}, CER {result.best_dev_cer:.3f} at step {result.best_step} -> {args.out}")


if __name__ == "__main__":
    main()
