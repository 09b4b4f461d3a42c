"""The demo corpus: eSpeak synthesis, the sentence composer, and a micro corpus in the Common Voice layout."""

import csv
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from forgetting.data.corpus import normalise_text
from forgetting.demo.synth import DEFECTS, HEADER, compose_sentence, open_espeak, write_demo_corpus
from forgetting.demo.wordlists import LEXICONS
from forgetting.params import load_params

ROOT = Path(__file__).resolve().parents[3]
MICRO = {"clips": 24, "speakers": 12, "seed": 0}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    return {lang: write_demo_corpus(out, lang, **MICRO) for lang in ("nl", "de")}


def test_synthesise_gives_audible_int16_at_22050_hz():
    espeak = open_espeak()
    samples = espeak.synthesise("Het ijs in het café is koud.", "nl+f3", 160, 50)
    assert espeak.sample_rate_hz == 22050
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert samples.size > 0.5 * 22050
    assert np.sqrt(np.mean((samples / 32768.0) ** 2)) > 0.01


def test_tsv_is_common_voice_format(corpus):
    for lang, summary in corpus.items():
        raw = (summary.root / "validated.tsv").read_bytes()
        assert raw.endswith(b"\n") and b"\r" not in raw
        assert raw.decode("utf-8").split("\n")[0] == "\t".join(HEADER)
        rows = read_rows(summary.root / "validated.tsv")
        assert len(rows) == MICRO["clips"] == summary.rows
        assert all(None not in row and len(row) == len(HEADER) for row in rows)
        assert {row["locale"] for row in rows} == {lang}
        assert all(re.fullmatch(rf"common_voice_{lang}_\d+\.mp3", row["path"]) for row in rows)
        assert len({row["path"] for row in rows}) == len(rows)


def test_speakers_have_stable_distinct_client_ids(corpus):
    for summary in corpus.values():
        ids = {row["client_id"] for row in read_rows(summary.root / "validated.tsv")}
        assert len(ids) == MICRO["speakers"]
        assert all(len(i) == 128 and int(i, 16) >= 0 for i in ids)


def test_clips_are_48_khz_mono_mp3(corpus):
    for summary in corpus.values():
        skip = {d.path for d in summary.defects if d.kind in ("corrupt_clip", "missing_clip")}
        for row in read_rows(summary.root / "validated.tsv"):
            if row["path"] not in skip:
                info = soundfile.info(summary.root / "clips" / row["path"])
                assert (info.format, info.samplerate, info.channels) == ("MP3", 48000, 1)
                assert info.duration >= 1.5  # short sentences are padded, so validate's 1 s floor rejects none


def test_planted_defects_are_there(corpus):
    for summary in corpus.values():
        rows = read_rows(summary.root / "validated.tsv")
        defects = {d.kind: d for d in summary.defects}
        assert sorted(defects) == sorted(DEFECTS)
        by_kind = {kind: rows[d.line - 2] for kind, d in defects.items()}
        assert all(by_kind[kind]["path"] == d.path for kind, d in defects.items())
        clips = summary.root / "clips"
        assert not (clips / defects["missing_clip"].path).exists()
        with pytest.raises(soundfile.LibsndfileError):
            soundfile.read(clips / defects["corrupt_clip"].path)
        assert by_kind["empty_sentence"]["sentence"] == ""
        assert soundfile.info(clips / defects["too_long"].path).duration > 15
        assert int(by_kind["down_voted"]["down_votes"]) > int(by_kind["down_voted"]["up_votes"])
        assert by_kind["segment"]["segment"] == "Benchmark" and len(by_kind["segment"]["sentence"].split()) == 1
        good = [row for row in rows if row["path"] not in {d.path for d in summary.defects}]
        assert all(2 <= int(r["up_votes"]) <= 4 and 0 <= int(r["down_votes"]) <= 1 and r["sentence"] for r in good)
        assert all(r["segment"] == "" for r in good)


def test_sentences_are_read_by_several_speakers_and_the_official_splits_keep_them_apart(tmp_path):
    summary = write_demo_corpus(tmp_path, "nl", clips=300, speakers=20, seed=2, readers_per_sentence=1.5)
    rows = read_rows(summary.root / "validated.tsv")
    readers: dict[str, set[str]] = {}
    for row in rows:
        readers.setdefault(normalise_text(row["sentence"]), set()).add(row["client_id"])
    assert 1.3 < len(rows) / len(readers) < 1.7  # about 1.5 readings per sentence
    assert sum(len(who) > 1 for who in readers.values()) > 0.2 * len(readers)  # many by two speakers or more
    sizes = sorted(sum(row["client_id"] == c for row in rows) for c in {row["client_id"] for row in rows})
    assert sizes[-1] > 3 * sizes[0]  # uneven speakers, as in a real release
    official = {name: read_rows(summary.root / f"{name}.tsv") for name in ("train", "dev", "test")}
    assert all(official.values()) and sum(map(len, official.values())) == len({normalise_text(r["sentence"]) for r in rows})
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not {r["client_id"] for r in official[a]} & {r["client_id"] for r in official[b]}
        assert not {r["sentence"] for r in official[a]} & {r["sentence"] for r in official[b]}


def test_same_seed_same_tsv_other_seed_other_tsv(tmp_path):
    first = (write_demo_corpus(tmp_path, "de", clips=10, speakers=3, seed=0).root / "validated.tsv").read_bytes()
    (tmp_path / "de" / "clips" / "stale.mp3").write_bytes(b"old")
    again = write_demo_corpus(tmp_path, "de", clips=10, speakers=3, seed=0)
    assert (again.root / "validated.tsv").read_bytes() == first
    assert sorted(p.name for p in again.root.iterdir()) == ["clips", "dev.tsv", "test.tsv", "train.tsv", "validated.tsv"]
    assert len(list((again.root / "clips").iterdir())) == 9  # 10 rows, one missing clip
    other = write_demo_corpus(tmp_path / "other", "de", clips=10, speakers=3, seed=1)
    assert (other.root / "validated.tsv").read_bytes() != first


def test_clips_are_byte_identical_from_fresh_processes(tmp_path):
    # 12 speakers use all 12 variants, the breathy ones (random noise) included
    code = "import sys, pathlib, forgetting.demo.synth as s; s.write_demo_corpus(pathlib.Path(sys.argv[1]), 'de', 12, 12, 0)"
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / run)], cwd=ROOT, check=True, capture_output=True)
    clips = sorted(p.name for p in (tmp_path / "a" / "de" / "clips").iterdir())
    assert len(clips) == 11
    assert all((tmp_path / "a/de/clips" / c).read_bytes() == (tmp_path / "b/de/clips" / c).read_bytes() for c in clips)


@pytest.mark.parametrize("lang, letters", [("nl", ["é", "ë", "ï", "ij", "'"]), ("de", ["ä", "ö", "ü", "ß", "'"])])
def test_sentences_use_the_language_letters_and_fit_its_alphabet(lang, letters):
    rnd = random.Random(0)
    sentences = [compose_sentence(LEXICONS[lang], rnd) for _ in range(400)]
    alphabet = set(load_params(ROOT / "params.yaml").sample.language(lang).alphabet) | {" "}
    assert all(set(normalise_text(s)) <= alphabet for s in sentences)
    assert all(3 <= len(s.split()) <= 8 for s in sentences)
    assert all(any(letter in s.lower() for s in sentences) for letter in letters)
    assert all(any(mark in s for s in sentences) for mark in ['"', ",", ".", "?"])
    assert len(set(sentences)) > 0.95 * len(sentences)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="clips_per_lang"):
        write_demo_corpus(Path("unused"), "nl", clips=8, speakers=12, seed=0)
    with pytest.raises(ValueError, match="'fr'"):
        write_demo_corpus(Path("unused"), "fr", clips=24, speakers=12, seed=0)
