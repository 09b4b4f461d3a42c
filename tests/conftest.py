"""Shared fixtures: a micro Dutch corpus of real eSpeak clips, made once per test session."""

import dataclasses
import json
from pathlib import Path

import pytest

from forgetting.data.audio import load_clip_16k
from forgetting.data.corpus import Utterance, build_vocab, read_corpus_tsv
from forgetting.demo.synth import write_demo_corpus


@dataclasses.dataclass(frozen=True)
class Corpus:
    clips_dir: Path
    vocab: Path
    utterances: list[Utterance]  # with duration_s, as the validate stage writes them


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Corpus:
    """Twelve Dutch eSpeak clips (the demo's planted defects left out), with durations and a vocabulary."""
    root = tmp_path_factory.mktemp("corpus")
    summary = write_demo_corpus(root, "nl", clips=18, speakers=3, seed=1)
    broken = {d.path for d in summary.defects}
    clips_dir = root / "nl" / "clips"
    utterances = [dataclasses.replace(u, duration_s=len(load_clip_16k(clips_dir / u.path)) / 16_000)
                  for u in read_corpus_tsv(root / "nl" / "validated.tsv") if u.path not in broken]
    vocab = root / "vocab.json"
    vocab.write_text(json.dumps(build_vocab(u.text for u in utterances), ensure_ascii=False), encoding="utf-8")
    return Corpus(clips_dir, vocab, utterances)
