"""Stage `average`: weight averaging after adaptation (Vander Eeckt & Van hamme), θ = (1 − α)·θ* + α·θ_adapted with
α = `average.alpha`: θ* the pretrained weights, θ_adapted the adapt stage's. α = 1 writes the adapted weights, α = 0
the pretrained ones, bit for bit (a parameter the pretrained model lacks, such as the mask embedding when only adapt
masks time, is the adapted one's). Cheap, and its own stage: `dvc exp run -S average.alpha=0.5` re-runs only this
stage and eval. It scores the averaged model on every language's dev split, so α is tuned on dev, never on test
(with α = 1 these are the kept checkpoint's dev scores)."""

from pathlib import Path

from forgetting.data.corpus import read_split_tsv
from forgetting.evaluation.scoring import error_rates, score_utterance
from forgetting.io import write_json
from forgetting.layout import clips_dir
from forgetting.methods.averaging import average_weights
from forgetting.training import distributed
from forgetting.training.decoding import transcribe
from forgetting.training.model import load_trained, save_model
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--pretrained", type=Path, required=True, help="the pretrained model folder (θ*)")
    parser.add_argument("--adapted", type=Path, required=True, help="the adapted model folder")
    parser.add_argument("--dev", action="append", required=True, help="LANG=TSV of a dev split: nl=data/validated/nl/dev.tsv")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON: the averaged model's dev WER and CER")
    cli.add_provenance(parser)
    args, params = cli.start(parser)
    cli.pin(params.resources)
    alpha = params.average.alpha
    devs = {lang: read_split_tsv(path) for lang, path in cli.named_paths(args.dev, "--dev").items()}

    model, processor = load_trained(args.adapted)  # a cut or foreign weights file is refused here, naming it
    averaged = average_weights(load_trained(args.pretrained)[0].state_dict(), model.state_dict(), alpha)
    model.load_state_dict(averaged, strict=True)
    save_model(model, processor, args.out)

    model.to(distributed.device())
    dev = {}
    for lang, utterances in devs.items():
        hypotheses = transcribe(model, processor, utterances, clips_dir(params.data.source(lang)), params.eval.batch_size)
        scores = [score_utterance(u.path, u.client_id, u.text, h) for u, h in zip(utterances, hypotheses, strict=True)]
        rates = error_rates(scores)
        dev[lang] = {"wer": rates["wer"], "cer": rates["cer"]}
    average_wer = sum(r["wer"] for r in dev.values()) / len(dev)
    cli.write_provenance(args.provenance, params.resources)
    write_json(args.metrics, {"alpha": alpha, "dev": dev, "average_dev_wer": average_wer})
    summary = ", ".join(f"{lang} WER {r['wer']:.3f} CER {r['cer']:.3f}" for lang, r in dev.items())
    print(f"average: θ = {1 - alpha:g}·θ* + {alpha:g}·θ_adapted over {len(averaged)} tensors; dev {summary} "
          f"-> {args.out}, {args.metrics}")


if __name__ == "__main__":
    cli.run(main)
