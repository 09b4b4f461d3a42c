"""The vocab stage's CLI: one vocabulary from the train splits it is given, and nothing from dev or test."""

import json
import sys

from forgetting.data.corpus import Utterance, write_split_tsv
from stages import vocab


def test_vocab_comes_from_the_train_splits_only(tmp_path, monkeypatch, capsys):
    for lang, train_text, test_text in (("nl", "één ijs", "xylofoon"), ("de", "groß", "quark")):
        write_split_tsv(tmp_path / lang / "train.tsv", [Utterance("s", "a.mp3", train_text, train_text)])
        write_split_tsv(tmp_path / lang / "test.tsv", [Utterance("t", "b.mp3", test_text, test_text)])
    out = tmp_path / "vocab.json"
    monkeypatch.setattr(sys, "argv", ["vocab", "--train", str(tmp_path / "nl" / "train.tsv"),
                                      str(tmp_path / "de" / "train.tsv"), "--out", str(out)])
    vocab.main()
    tokens = json.loads(out.read_text(encoding="utf-8"))
    assert set(tokens) == {"[PAD]", "[UNK]", "|", *"énijsgroß"}
    assert not {"x", "q", "u", "k"} & set(tokens)  # the test splits' letters
    assert capsys.readouterr().out.startswith(f"vocab: {len(tokens)} tokens from 2 train sentences -> {out}")
