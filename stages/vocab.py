"""Stage `vocab`: one character vocabulary for both languages, from the validated train splits only."""

import json
from pathlib import Path

from forgetting.data.corpus import build_vocab, read_split_tsv
from forgetting.io import atomic_write_text
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--train", type=Path, nargs="+", required=True, help="validated train.tsv of each language")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    texts = [u.text for path in args.train for u in read_split_tsv(path)]
    vocab = build_vocab(texts)
    atomic_write_text(args.out, json.dumps(vocab, ensure_ascii=False, indent=1) + "\n")
    letters = "".join(t for t in vocab if len(t) == 1 and t != "|")
    print(f"vocab: {len(vocab)} tokens from {len(texts)} train sentences -> {args.out} ({letters})")


if __name__ == "__main__":
    cli.run(main)
