"""Stage `eval`: WER and CER of every model on every language's test split (greedy CTC), forgetting and
learning between the models, per-utterance predictions and figures."""

from pathlib import Path

from forgetting.corpus import read_split_tsv
from forgetting.decoding import transcribe
from forgetting.figures import plot_adapt_curves, plot_error_rates
from forgetting.io import write_json
from forgetting.layout import MODELS, SOURCE, TARGET, clips_dir, predictions_name
from forgetting.model import load_trained
from forgetting.scoring import derived_metrics, error_rates, score_utterance, write_scores_tsv
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR of a model, e.g. pretrained=models/pretrained")
    parser.add_argument("--test", action="append", required=True, help="LANG=TSV of a test split: nl=data/validated/nl/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--predictions", type=Path, required=True, help="folder for <model>_<lang>.tsv")
    parser.add_argument("--figure", type=Path, required=True, help="error-rate PNG to write")
    parser.add_argument("--curves", type=Path, help="the adapt stage's dvclive folder, drawn to --curves-figure")
    parser.add_argument("--curves-figure", type=Path, help="adapt learning curves with the EWC penalty, PNG")
    args, params = cli.start(parser)
    samples, seed = params.eval.bootstrap_samples, params.seed

    tests = {lang: read_split_tsv(path) for lang, path in cli.named_paths(args.test, "--test").items()}
    scores, metrics = {}, {}
    for name, model_dir in cli.named_paths(args.model, "--model").items():
        model, processor = load_trained(model_dir)
        scores[name], metrics[name] = {}, {}
        for lang, utterances in tests.items():
            hypotheses = transcribe(model, processor, utterances, clips_dir(params.data.corpus, lang), params.eval.batch_size)
            scores[name][lang] = [score_utterance(u.path, u.text, h) for u, h in zip(utterances, hypotheses, strict=True)]
            write_scores_tsv(args.predictions / predictions_name(name, lang), scores[name][lang])
            metrics[name][lang] = error_rates(scores[name][lang], samples, seed)
    plot_error_rates(metrics, args.figure)
    write_json(args.predictions / "error_rates.json", [  # the 2x2 bars of `dvc plots show`
        {"system": f"{name} {lang} {rate.upper()}", "error_rate": metrics[name][lang][rate]}
        for name in scores for lang in tests for rate in ("wer", "cer")])
    if args.curves and args.curves_figure:
        plot_adapt_curves(args.curves, args.curves_figure)
    metrics |= derived_metrics(scores, *MODELS, SOURCE, TARGET, samples, seed)
    write_json(args.metrics, metrics)
    summary = [f"{name} {lang} WER {r['wer']:.3f} CER {r['cer']:.3f}" for name in scores for lang, r in metrics[name].items()]
    print(f"eval: {'; '.join(summary)} -> {args.metrics}")


if __name__ == "__main__":
    cli.run(main)
