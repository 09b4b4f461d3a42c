"""Stage `adapt`: fine-tune the pretrained model on the target language (German) with the EWC penalty
(λ/2)·Σ F·(θ−θ*)² anchored at the pretrained weights; `adapt.method: l2` takes F = 1, λ = 0 is plain
fine-tuning through the same code."""

from pathlib import Path

import torch

from forgetting.corpus import read_split_tsv
from forgetting.fisher import FisherError, check_fisher_matches, load_fisher
from forgetting.layout import clips_dir, weights_file
from forgetting.model import apply_training_config, load_trained
from forgetting.penalty import EWCPenalty
from forgetting.resume import stage_run_key
from forgetting.trainer import train_ctc
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the pretrained model folder (θ*)")
    parser.add_argument("--fisher", type=Path, required=True, help="fisher.safetensors of the fisher stage")
    parser.add_argument("--train", type=Path, required=True, help="validated train.tsv of the target language")
    parser.add_argument("--dev", type=Path, required=True, help="validated dev.tsv of the target language")
    parser.add_argument("--lang", required=True, help="corpus language folder holding the clips")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--reports", type=Path, required=True, help="dvclive folder for curves and metrics.json")
    cli.add_checkpoints(parser)
    args, params = cli.start(parser)
    ap = params.adapt

    model, processor = load_trained(args.model)
    fisher, meta = load_fisher(args.fisher)
    weights = weights_file(args.model)
    check_fisher_matches(args.fisher, meta, weights)
    apply_training_config(model, ap)  # freeze first: the penalty anchors exactly the parameters that train
    try:
        penalty = EWCPenalty(model, fisher if ap.method == "ewc" else None, ap.ewc_lambda, getattr(torch, ap.ewc_dtype))
    except (KeyError, ValueError) as err:
        raise FisherError(f"{args.fisher} does not fit the parameters adapt trains: {err}; run `dvc repro fisher`") from err
    key = stage_run_key(params, "adapt", [args.train, args.dev, weights, args.fisher])
    train, dev = read_split_tsv(args.train), read_split_tsv(args.dev)
    result = train_ctc(model, processor, train, dev, clips_dir(params.data.corpus, args.lang), ap, "adapt", params.seed,
                       args.out, args.reports, args.checkpoints, key, regulariser=penalty)
    weighting = f"Fisher normalised by {meta['normalize']}" if ap.method == "ewc" else "F = 1"
    print(f"adapt: {len(train)} {args.lang} utterances, {ap.method} λ={ap.ewc_lambda:g} ({weighting}), "
          f"{result.describe()} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
