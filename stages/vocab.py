"""Stage `vocab`: one character vocabulary for both languages, from the validated train splits only."""

import argparse
import json
from pathlib import Path

from stages.corpus import build_vocab, read_split_tsv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="validated train.tsv of each language")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    texts = [u.text for path in args.train for u in read_split_tsv(path)]
    vocab = build_vocab(texts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    letters = "".join(t for t in vocab if len(t) == 1 and t != "|")
    print(f"vocab: {len(vocab)} tokens from {len(texts)} train sentences -> {args.out} ({letters})")


if __name__ == "__main__":
    main()
