"""Common Voice metadata reading, the text normaliser, filters, speaker-disjoint splits and the vocabulary."""

from pathlib import Path

import pytest

from forgetting.corpus import (
    CorpusError,
    Utterance,
    build_vocab,
    filter_and_sample,
    metadata_reject_reason,
    normalise_text,
    read_corpus_tsv,
    read_split_tsv,
    split_by_speaker,
    write_split_tsv,
)

FULL_HEADER = "\t".join(["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
                          "age", "gender", "accents", "variant", "locale", "segment"])


def write_tsv(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    data = newline.join(lines) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


@pytest.mark.parametrize(("sentence", "text"), [
    ('Hij zei: "Kom binnen!"', "hij zei kom binnen"),
    ("Zo’n mooie dag, toch?", "zo'n mooie dag toch"),
    ("'s Avonds gaan we naar België.", "s avonds gaan we naar belgië"),
    ("Geht's dir gut?  Straße – ÄRGER", "geht's dir gut straße ärger"),
    ("Noord-Holland", "noord holland"),
    ("e\u0301e\u0301n", "één"),  # decomposed accents compose (NFC)
    ("Er zijn 3 katten", "er zijn 3 katten"),  # digits survive, so the alphabet filter can reject them
    ("...", ""),
])
def test_normalise_text(sentence, text):
    assert normalise_text(sentence) == text


def test_reads_real_release_quirks_quotes_crlf_bom(tmp_path):
    lines = [FULL_HEADER,
             'c1\tcommon_voice_nl_1.mp3\ts1\tHij zei "hallo" tegen me.\t\t2\t0\t\t\t\t\tnl\t',
             'c2\tcommon_voice_nl_2.mp3\ts2\t"Nee," zei ze.\t\t3\t1\tthirties\t\t\t\tnl\t']
    rows = read_corpus_tsv(write_tsv(tmp_path / "validated.tsv", lines, newline="\r\n", bom=True))
    assert [r.sentence for r in rows] == ['Hij zei "hallo" tegen me.', '"Nee," zei ze.']
    assert [r.text for r in rows] == ["hij zei hallo tegen me", "nee zei ze"]
    assert (rows[1].client_id, rows[1].path, rows[1].up_votes, rows[1].down_votes, rows[1].line) == (
        "c2", "common_voice_nl_2.mp3", 3, 1, 3)


def test_reads_older_release_without_optional_columns(tmp_path):
    lines = ["client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent",
             "c1\ta.mp3\tEen twee drie.\t2\t0\t\t\t"]
    (row,) = read_corpus_tsv(write_tsv(tmp_path / "validated.tsv", lines))
    assert (row.path, row.text) == ("a.mp3", "een twee drie")


def test_errors_name_file_and_line(tmp_path):
    missing = write_tsv(tmp_path / "a.tsv", ["client_id\tpath\tup_votes\tdown_votes", "c\tp\t1\t0"])
    with pytest.raises(CorpusError, match=r"a\.tsv line 1: missing column\(s\) sentence"):
        read_corpus_tsv(missing)
    ragged = write_tsv(tmp_path / "b.tsv", [FULL_HEADER, "c1\tx.mp3\tonly three fields"])
    with pytest.raises(CorpusError, match=r"b\.tsv line 2: 3 fields, header has 13"):
        read_corpus_tsv(ragged)
    votes = write_tsv(tmp_path / "c.tsv", ["client_id\tpath\tsentence\tup_votes\tdown_votes", "c\tx.mp3\thallo\ttwo\t0"])
    with pytest.raises(CorpusError, match=r"c\.tsv line 2 \(x\.mp3\): vote count"):
        read_corpus_tsv(votes)


@pytest.mark.parametrize(("sentence", "up", "down", "reason"), [
    ("goed zo", 2, 0, None),
    ("goed zo", 1, 0, "too_few_up_votes"),
    ("goed zo", 2, 3, "down_votes_not_below_up_votes"),
    ("?!", 2, 0, "empty_text"),
    ("er zijn 3 katten", 2, 0, "chars_outside_alphabet"),
    ("ça va", 2, 0, "chars_outside_alphabet"),
])
def test_metadata_filters(sentence, up, down, reason):
    u = Utterance("c", "x.mp3", sentence, normalise_text(sentence), up, down)
    assert metadata_reject_reason(u, "abcdefghijklmnopqrstuvwxyzëé'", min_up_votes=2) == reason


def test_filter_and_sample_counts_every_drop_and_is_seeded():
    rows = [Utterance("a", f"{i}.mp3", "x", "zin", up_votes=2) for i in range(20)]
    rows += [Utterance("b", "low.mp3", "x", "zin", up_votes=1), Utterance("b", "num.mp3", "3", "3", up_votes=2),
             Utterance("b", "neg.mp3", "x", "zin", up_votes=2, down_votes=2), Utterance("b", "e.mp3", "", "", up_votes=2)]
    sample = filter_and_sample(rows, "aeinz", min_up_votes=2, n=5, seed="0-nl")
    assert sample.dropped == {"too_few_up_votes": 1, "chars_outside_alphabet": 1, "down_votes_not_below_up_votes": 1,
                              "empty_text": 1}
    assert sample.passed == rows[:20] and len(sample.sampled) == 5 and set(sample.sampled) <= set(rows[:20])
    assert sample.sampled == filter_and_sample(rows, "aeinz", 2, 5, seed="0-nl").sampled
    assert sample.sampled != filter_and_sample(rows, "aeinz", 2, 5, seed="1-nl").sampled
    assert filter_and_sample(rows, "aeinz", 2, 50, seed="0-nl").sampled == rows[:20]  # fewer pass than n: all, in order


def corpus(speakers: int = 12, per_speaker: int = 10) -> list[Utterance]:
    return [Utterance(f"spk{s}", f"{s}_{i}.mp3", "x", "x") for s in range(speakers) for i in range(per_speaker + s)]


def test_split_is_speaker_disjoint_and_covers_everything():
    utterances = corpus()
    splits = split_by_speaker(utterances, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)
    speakers = {name: {u.client_id for u in rows} for name, rows in splits.items()}
    assert not speakers["train"] & speakers["dev"] and not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    assert sorted(u.path for rows in splits.values() for u in rows) == sorted(u.path for u in utterances)
    assert all(splits.values())
    assert len(splits["train"]) > 0.6 * len(utterances)


def test_split_is_deterministic_per_seed():
    fractions = {"train": 0.8, "dev": 0.1, "test": 0.1}
    first = split_by_speaker(corpus(), fractions, seed=0)
    assert first == split_by_speaker(corpus(), fractions, seed=0)
    others = [split_by_speaker(corpus(), fractions, seed=s) for s in range(1, 4)]
    assert any(o != first for o in others)


def test_split_needs_a_speaker_per_split():
    with pytest.raises(CorpusError, match="2 speaker"):
        split_by_speaker(corpus(speakers=2), {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=0)


def test_split_tsv_round_trip_keeps_quotes(tmp_path):
    rows = [Utterance("c1", "a.mp3", 'Ze zei "ja".', "ze zei ja", duration_s=1.25)]
    write_split_tsv(tmp_path / "train.tsv", rows, extra=("duration_s",))
    (back,) = read_split_tsv(tmp_path / "train.tsv")
    assert (back.sentence, back.text, back.duration_s) == ('Ze zei "ja".', "ze zei ja", 1.25)


def test_vocab_has_special_tokens_first_and_only_given_letters():
    vocab = build_vocab(["groß ärger", "één ijs"])
    assert list(vocab)[:3] == ["[PAD]", "[UNK]", "|"] and vocab["[PAD]"] == 0
    assert set(vocab) - {"[PAD]", "[UNK]", "|"} == set("großärgeénijs")
    assert sorted(vocab.values()) == list(range(len(vocab)))
