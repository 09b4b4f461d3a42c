"""Stage `eval`: WER and CER of every model on every language's test split (greedy CTC), with speaker-level (or
utterance-level) bootstrap intervals, forgetting and learning between the models, per-utterance predictions and
figures. Under torchrun each process transcribes its share of each test split; process 0 scores and writes."""

from pathlib import Path

from forgetting.data.corpus import read_split_tsv
from forgetting.evaluation.figures import plot_adapt_curves, plot_error_rates
from forgetting.evaluation.scoring import derived_metrics, error_rates, interval_record, score_utterance, write_scores_tsv
from forgetting.io import write_json
from forgetting.layout import MODELS, SOURCE, TARGET, clips_dir, predictions_name
from forgetting.training import distributed
from forgetting.training.decoding import transcribe
from forgetting.training.model import load_trained
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--model", action="append", required=True, help="NAME=DIR of a model, e.g. pretrained=models/pretrained")
    parser.add_argument("--test", action="append", required=True, help="LANG=TSV of a test split: nl=data/validated/nl/test.tsv")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--predictions", type=Path, required=True, help="folder for <model>_<lang>.tsv")
    parser.add_argument("--figure", type=Path, required=True, help="error-rate PNG to write")
    parser.add_argument("--curves", type=Path, help="the adapt stage's dvclive folder, drawn to --curves-figure")
    parser.add_argument("--curves-figure", type=Path, help="adapt learning and forgetting curves, PNG")
    cli.add_provenance(parser)
    args, params = cli.start(parser)
    cli.pin(params.resources)
    ep = params.eval
    interval = {"samples": ep.bootstrap_samples, "seed": params.seed, "method": ep.bootstrap, "min_speakers": ep.min_speakers}
    distributed.init()

    tests = {lang: read_split_tsv(path) for lang, path in cli.named_paths(args.test, "--test").items()}
    scores, metrics = {}, {"interval": interval_record(ep.bootstrap_samples, ep.bootstrap, ep.min_speakers)}
    for name, model_dir in cli.named_paths(args.model, "--model").items():
        model, processor = load_trained(model_dir)
        model.to(distributed.device())
        scores[name] = {}
        for lang, utterances in tests.items():
            mine = distributed.shard(len(utterances))
            hypotheses = transcribe(model, processor, [utterances[i] for i in mine], clips_dir(params.data.source(lang)),
                                    ep.batch_size, progress=distributed.is_main())
            by_index = dict(pair for shard in distributed.gather_objects(list(zip(mine, hypotheses, strict=True)))
                            for pair in shard)
            scores[name][lang] = [score_utterance(u.path, u.client_id, u.text, by_index[i]) for i, u in enumerate(utterances)]
    if not distributed.is_main():
        return
    for name in scores:
        metrics[name] = {}
        for lang in tests:
            metrics[name][lang] = error_rates(scores[name][lang], **interval)
            write_scores_tsv(args.predictions / predictions_name(name, lang), scores[name][lang])
    plot_error_rates({name: metrics[name] for name in scores}, args.figure)
    write_json(args.predictions / "error_rates.json", [  # the 2x2 bars of `dvc plots show`
        {"system": f"{name} {lang} {rate.upper()}", "error_rate": metrics[name][lang][rate]}
        for name in scores for lang in tests for rate in ("wer", "cer")])
    if args.curves and args.curves_figure:
        plot_adapt_curves(args.curves, TARGET, SOURCE, args.curves_figure)
    metrics |= derived_metrics(scores, *MODELS, SOURCE, TARGET, **interval)
    cli.write_provenance(args.provenance, params.resources)
    write_json(args.metrics, metrics)
    summary = [f"{name} {lang} WER {r['wer']:.3f} CER {r['cer']:.3f}" for name in scores for lang, r in metrics[name].items()]
    print(f"eval: {'; '.join(summary)} -> {args.metrics}")


if __name__ == "__main__":
    cli.run(main)
