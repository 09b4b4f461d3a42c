"""Stage `adapt`: fine-tune the pretrained model on the target language (German) with the EWC penalty
(λ/2)·Σ F·(θ−θ*)² anchored at the pretrained weights; `adapt.method: l2` takes F = 1, λ = 0 is plain
fine-tuning through the same code."""

import argparse
import dataclasses
import logging
from pathlib import Path

import torch

from stages import ewc
from stages.corpus import read_split_tsv
from stages.ewc import EWCPenalty, load_fisher
from stages.model import apply_training_config, load_trained
from stages.params import load_params
from stages.train import core_code_files, file_sha256, run_key, train_ctc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder (θ*)")
    parser.add_argument("--fisher", type=Path, required=True, help="fisher.safetensors of the fisher stage")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the target language")
    parser.add_argument("--dev", type=Path, required=True, help="validated dev.tsv of the target language")
    parser.add_argument("--lang", default="de", help="corpus language folder holding the clips")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--reports", type=Path, required=True, help="dvclive folder for curves and metrics.json")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="resumable checkpoints, not a DVC output")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params()
    ap = params.adapt

    model, processor = load_trained(args.model)
    fisher, meta = load_fisher(args.fisher)
    weights = args.model / "model.safetensors"
    if meta.get("model_sha256") != file_sha256(weights):
        raise SystemExit(f"{args.fisher} was estimated for another model than {weights}: run `dvc repro fisher`")
    apply_training_config(model, ap)  # freeze first: the penalty anchors exactly the parameters that train
    penalty = EWCPenalty(model, fisher if ap.method == "ewc" else None, ap.ewc_lambda, getattr(torch, ap.ewc_dtype))
    key = run_key({"adapt": dataclasses.asdict(ap), "seed": params.seed, "corpus": params.data.corpus},
                  [args.train, args.dev, weights, args.fisher, *core_code_files(), Path(__file__), Path(ewc.__file__)])
    train, dev = read_split_tsv(args.train), read_split_tsv(args.dev)
    result = train_ctc(model, processor, train, dev, Path(params.data.corpus) / args.lang / "clips", ap, "adapt",
                       params.seed, args.out, args.reports, args.checkpoints, key, regulariser=penalty)
    resumed = f", resumed at step {result.resumed_from_step}" if result.resumed_from_step is not None else ""
    weighting = f"Fisher normalised by {meta['normalize']}" if ap.method == "ewc" else "F = 1"
    print(f"adapt: {result.steps} steps on {len(train)} {args.lang} utterances, {ap.method} λ={ap.ewc_lambda:g} "
          f"({weighting}){resumed}; best dev WER {result.best_dev_wer:.3f}, "
          f"CER {result.best_dev_cer:.3f} at step {result.best_step} -> {args.out}")


if __name__ == "__main__":
    main()
