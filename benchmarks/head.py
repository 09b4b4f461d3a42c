"""Benchmark: starting Dutch from a German CTC checkpoint, keep the head's rows of the characters both languages have
(`model.head: by_token`) or start the head afresh (`fresh`)? Dutch dev CER at the first evaluations tells.

    python -m benchmarks.head [--german-steps 1500] [--dutch-steps 100] [--eval-steps 20]

Needs the demo's validated splits (`dvc repro validate vocab`). A tiny model (`model.config`) is pretrained on German
(the demo's German train split, with a German-only vocabulary, `<pad>` its blank as in published CTC checkpoints) and
saved as a start checkpoint; then Dutch is trained from it with each head option, same seed, same batches, and its
dev CER is taken every `--eval-steps` steps. Writes reports/bench/head.json.
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

from forgetting.curves import dev_curve, read_curve
from forgetting.data.corpus import build_vocab, read_split_tsv
from forgetting.io import write_json
from forgetting.layout import SOURCE, TARGET, clips_dir
from forgetting.params import load_params
from forgetting.training.batching import Split
from forgetting.training.model import build_model, build_processor, save_model
from forgetting.training.trainer import train_ctc


def german_vocab(texts: list[str]) -> dict[str, int]:
    """A German checkpoint's vocabulary in the published layout: `<pad>` (the blank), `<s>`, `</s>`, `<unk>`, `|`,
    then the characters of the German train text."""
    ours = build_vocab(texts)  # [PAD], [UNK], |, characters
    letters = [t for t in sorted(ours, key=ours.get) if t not in ("[PAD]", "[UNK]", "|")]
    return {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *letters])}


def published_processor(vocab: Path) -> Wav2Vec2Processor:
    """A processor over a published-layout vocabulary (`<pad>` the blank at id 0, `<unk>`), our feature extractor."""
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|",
                                     bos_token=None, eos_token=None)
    return Wav2Vec2Processor(feature_extractor=build_processor(Path("data/vocab.json")).feature_extractor,
                             tokenizer=tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--german-steps", type=int, default=1500)
    parser.add_argument("--dutch-steps", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/head.json"))
    args = parser.parse_args()
    params = load_params()
    validated = Path("data/validated")
    split = {(lang, name): Split(read_split_tsv(validated / lang / f"{name}.tsv"), clips_dir(params.data.source(lang)))
             for lang in (SOURCE, TARGET) for name in ("train", "dev")}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "de.json").write_text(json.dumps(german_vocab([u.text for u in split[TARGET, "train"].utterances]),
                                                ensure_ascii=False), encoding="utf-8")
        german = published_processor(tmp / "de.json")
        model = build_model(params.model, german.tokenizer.get_vocab(), params.pretrain.seed)
        german_params = dataclasses.replace(params.pretrain, max_steps=args.german_steps, epochs=None,
                                            eval_steps=args.german_steps)
        german_run = train_ctc(model, german, split[TARGET, "train"], {TARGET: split[TARGET, "dev"]}, german_params,
                               "german", tmp / "german", tmp / "german-reports", tmp / "checkpoints", "g" * 64)
        save_model(model, german, tmp / "german")
        dutch = build_processor(Path("data/vocab.json"))
        dutch_params = dataclasses.replace(params.pretrain, max_steps=args.dutch_steps, epochs=None,
                                           eval_steps=args.eval_steps, save_total_limit=args.dutch_steps)
        for head in ("by_token", "fresh"):
            start = dataclasses.replace(params.model, name=str(tmp / "german"), head=head)
            model = build_model(start, dutch.tokenizer.get_vocab(), params.pretrain.seed)
            run = train_ctc(model, dutch, split[SOURCE, "train"], {SOURCE: split[SOURCE, "dev"]}, dutch_params, head,
                            tmp / head, tmp / f"{head}-reports", tmp / "checkpoints", head[0] * 64, keep="last")
            steps, cers = read_curve(tmp / f"{head}-reports", dev_curve(SOURCE, "cer"))
            results[head] = {"dev_cer_by_step": dict(zip(steps, cers, strict=True)), "final": run.dev[SOURCE]}
    write_json(args.out, {"german_dev": german_run.dev[TARGET], "german_steps": args.german_steps,
                          "dutch_steps": args.dutch_steps, "eval_steps": args.eval_steps, "dutch": results,
                          "model": params.model.config, "pretrain": dataclasses.asdict(params.pretrain)})
    steps = sorted(results["by_token"]["dev_cer_by_step"])
    print(f"head: Dutch dev CER from a German start (German dev CER {german_run.dev[TARGET]['cer']:.3f}), by step "
          + "; ".join(f"{s}: by_token {results['by_token']['dev_cer_by_step'][s]:.3f}, fresh "
                      f"{results['fresh']['dev_cer_by_step'][s]:.3f}" for s in steps) + f" -> {args.out}")


if __name__ == "__main__":
    main()
