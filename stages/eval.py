"""Stage `eval`: WER and CER of every model on every language's test split (greedy CTC), forgetting and
learning between the models, per-utterance predictions and a figure."""

import argparse
import logging
from pathlib import Path

from stages.corpus import read_split_tsv, write_json
from stages.figures import plot_adapt_curves, plot_error_rates
from stages.model import load_trained
from stages.params import load_params
from stages.scoring import derived_metrics, error_rates, score_utterance, transcribe, write_scores_tsv


def named_paths(values: list[str], flag: str) -> dict[str, Path]:
    """`["name=path", ...]` as a mapping; a malformed or repeated name fails naming the flag."""
    pairs = dict(value.partition("=")[::2] for value in values)
    if len(pairs) != len(values) or not all(name and path for name, path in pairs.items()):
        raise SystemExit(f"{flag}: expected distinct NAME=PATH values, got {values}")
    return {name: Path(path) for name, path in pairs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR of a model, e.g. pretrained=models/pretrained")
    parser.add_argument("--test", action="append", required=True, help="LANG=TSV of a test split: nl=data/validated/nl/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--predictions", type=Path, required=True, help="folder for <model>_<lang>.tsv")
    parser.add_argument("--figure", type=Path, required=True, help="error-rate PNG to write")
    parser.add_argument("--curves", type=Path, help="dvclive plots/metrics folder of the adapt stage, drawn to --curves-figure")
    parser.add_argument("--curves-figure", type=Path, help="adapt learning curves with the EWC penalty, PNG")
    parser.add_argument("--before", default="pretrained", help="model before adaptation (forgetting, learning)")
    parser.add_argument("--after", default="adapted", help="model after adaptation")
    parser.add_argument("--source", default="nl", help="language learnt first (forgetting is measured on it)")
    parser.add_argument("--target", default="de", help="language adapted to (learning is measured on it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = load_params()
    samples, seed = params.eval.bootstrap_samples, params.seed
    tests = {lang: read_split_tsv(path) for lang, path in named_paths(args.test, "--test").items()}
    scores, metrics = {}, {}
    for name, model_dir in named_paths(args.model, "--model").items():
        model, processor = load_trained(model_dir)
        scores[name], metrics[name] = {}, {}
        for lang, utterances in tests.items():
            clips_dir = Path(params.data.corpus) / lang / "clips"
            hypotheses = transcribe(model, processor, utterances, clips_dir, params.eval.batch_size)
            scores[name][lang] = [score_utterance(u.path, u.text, h) for u, h in zip(utterances, hypotheses, strict=True)]
            write_scores_tsv(args.predictions / f"{name}_{lang}.tsv", scores[name][lang])
            metrics[name][lang] = error_rates(scores[name][lang], samples, seed)
    plot_error_rates(metrics, args.figure)
    write_json(args.predictions / "error_rates.json", [  # the 2x2 bars of `dvc plots show`
        {"system": f"{name} {lang} {rate.upper()}", "error_rate": metrics[name][lang][rate]}
        for name in scores for lang in tests for rate in ("wer", "cer")])
    if args.curves and args.curves_figure:
        plot_adapt_curves(args.curves, args.curves_figure)
    metrics |= derived_metrics(scores, args.before, args.after, args.source, args.target, samples, seed)
    write_json(args.metrics, metrics)
    summary = [f"{name} {lang} WER {r['wer']:.3f} CER {r['cer']:.3f}" for name in scores for lang, r in metrics[name].items()]
    print(f"eval: {'; '.join(summary)} -> {args.metrics}")


if __name__ == "__main__":
    main()
