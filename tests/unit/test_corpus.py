"""Common Voice metadata reading, the text normaliser, filters, speaker-disjoint splits and the vocabulary."""

import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    ("İngiliz", "i\u0307ngiliz"),  # the dot stays on its i (and the alphabet rejects it), not a space
    ("Versiche\u00adrung", "versicherung"),  # soft hyphen
    ("Null\u200bstelle und\u200d so", "nullstelle und so"),  # zero-width space and joiner
    ("\ufeffHallo", "hallo"),  # a BOM inside a field
    ("„Hallo“, sagte er. ‚Gut‘ – «oui»", "hallo sagte er gut oui"),  # curly and angle quotes
    ("the puppy’s toy", "the puppy's toy"),
    ("die D’Hondtschen Sitze", "die d'hondtschen sitze"),
    ("IJsland", "ijsland"),
    ("Challenge-Response", "challenge response"),
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


@pytest.mark.parametrize(("damage", "message"), [
    (lambda text: "", r"train\.tsv: empty file, expected a header"),
    (lambda text: text[: text.index("1.25") + 2], r"train\.tsv line 3: the file ends inside a row \(cut short\)"),
    (lambda text: text[: text.index("ja")] + "\n", r"train\.tsv line 3: 3 fields, the header has 5"),
    (lambda text: text.replace("1.25", "soon"), r"train\.tsv line 3 \(b\.mp3\): duration_s 'soon' is not a positive"),
    (lambda text: text.replace("client_id", "speaker"), r"train\.tsv line 1: header \['path', 'speaker'"),
])
def test_an_empty_cut_or_foreign_split_file_is_refused_with_file_line_and_remedy(tmp_path, damage, message):
    rows = [Utterance("c1", "a.mp3", "Een.", "een", duration_s=2.0),
            Utterance("c2", "b.mp3", 'Ze zei "ja".', "ze zei ja", duration_s=1.25)]
    path = tmp_path / "train.tsv"
    write_split_tsv(path, rows, extra=("duration_s",))
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(CorpusError, match=message) as err:
        read_split_tsv(path)
    assert "run `dvc repro`" in str(err.value)


# --- fuzzing: any input gives a valid value or an error that names the file and row ----------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CELL = st.text(st.characters(codec="utf-8", exclude_characters="\t\r\n"), max_size=12)


@FUZZ
@given(st.text(max_size=40))
def test_fuzz_normalise_text_is_clean_and_idempotent(sentence):
    text = normalise_text(sentence)
    assert text == text.strip() and "  " not in text and not any(c.isspace() and c != " " for c in text)
    assert not any(unicodedata.category(c) == "Cf" for c in text)
    assert normalise_text(text) == text


@FUZZ
@given(st.lists(st.lists(CELL, min_size=0, max_size=8), max_size=6), st.booleans(), st.binary(max_size=8))
def test_fuzz_metadata_reader_returns_rows_or_names_file_and_line(tmp_path, rows, with_header, junk):
    path = tmp_path / "validated.tsv"
    header = ["client_id", "path", "sentence", "up_votes", "down_votes"] if with_header else []
    lines = ["\t".join(header)] * with_header + ["\t".join(row) for row in rows]
    path.write_bytes("\n".join(lines).encode("utf-8") + junk)
    try:
        utterances = read_corpus_tsv(path)
    except CorpusError as err:
        assert str(err).startswith(str(path))
    else:
        assert all(isinstance(u, Utterance) and u.line >= 2 and u.text == normalise_text(u.sentence) for u in utterances)


@FUZZ
@given(st.lists(st.tuples(CELL, CELL, CELL, st.floats(allow_nan=True)), max_size=5), st.integers(0, 200),
       st.binary(max_size=4))
def test_fuzz_split_reader_returns_rows_or_names_file_and_line(tmp_path, rows, cut, junk):
    path = tmp_path / "train.tsv"
    utterances = [Utterance(c, p, s, normalise_text(s), duration_s=d) for p, c, s, d in rows]
    write_split_tsv(path, utterances, extra=("duration_s",))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut % (len(data) + 1)] + junk)
    try:
        read = read_split_tsv(path)
    except CorpusError as err:
        assert str(err).startswith(str(path))
    else:
        assert all(isinstance(u, Utterance) and u.duration_s > 0 for u in read)
