"""Common Voice metadata reading, the text normaliser (against a copy of its first, per-character version), the
filters and the sample, the split TSVs and the vocabulary."""

import csv
import dataclasses
import gc
import io
import re
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forgetting.data import corpus
from forgetting.data.corpus import (
    CorpusError,
    Utterance,
    build_vocab,
    filter_and_sample,
    metadata_reject_reason,
    normalise_text,
    read_corpus_tsv,
    read_split_tsv,
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


# The first implementation of normalise_text, kept verbatim: the fast one must give the same output for every input.
_APOSTROPHES = str.maketrans({c: "'" for c in "’‘ʼ`´′"})
_DASHES = re.compile(r"[-‐‑‒–—―]")
_STRAY_APOSTROPHE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])")  # not between two letters
_SPACES = re.compile(r"\s+")


def _reference_normalise(sentence: str) -> str:
    text = unicodedata.normalize("NFC", sentence.lower()).translate(_APOSTROPHES)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = _DASHES.sub(" ", text)
    text = "".join(c if c.isalnum() or c.isspace() or c == "'" or unicodedata.category(c).startswith("M") else " "
                   for c in text)
    text = _STRAY_APOSTROPHE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def test_normalise_text_equals_the_reference_on_every_code_point():
    differ = [hex(cp) for cp in range(sys.maxunicode + 1) if not 0xD800 <= cp <= 0xDFFF
              and normalise_text(chr(cp)) != _reference_normalise(chr(cp))]
    assert differ == []


# Characters where the rules meet: apostrophes, dashes, formatting (Cf), combining marks, spaces, letters that lower
# or compose into several code points, punctuation outside Latin-1, digits; and anything else.
TRICKY = "'’‘ʼ`´′-‐–—_ \t\u00a0\u2028\u200b\u00ad\ufeff\u0301\u0307\u20dd\u0903İIıß\u1e9eÅ\u212b«»„“…·¿\u3002\u060c0٣²½Aaé"


@settings(max_examples=2000, deadline=None)
@given(st.text(st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=["Cs"])), max_size=30))
def test_normalise_text_equals_the_reference(sentence):
    assert normalise_text(sentence) == _reference_normalise(sentence)


def test_utterance_is_a_frozen_slotted_record_without_votes_by_default():
    u = Utterance("c", "a.mp3", "Een.", "een")
    assert (u.up_votes, u.down_votes, u.line, u.duration_s, u.segment) == (None, None, 0, None, "")
    assert not hasattr(u, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        u.text = "twee"  # type: ignore[misc]


def test_the_reader_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    good = write_tsv(tmp_path / "a.tsv", ["client_id\tpath\tsentence\tup_votes\tdown_votes", "c\tx.mp3\tja\t2\t0"])
    bad = write_tsv(tmp_path / "b.tsv", ["client_id\tpath\tsentence\tup_votes\tdown_votes", "c\tx.mp3\tja\ttwee\t0"])
    assert gc.isenabled()
    read_corpus_tsv(good)
    with pytest.raises(CorpusError):
        read_corpus_tsv(bad)
    assert gc.isenabled()
    gc.disable()
    try:
        read_corpus_tsv(good)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_reads_segment_and_shares_speaker_and_sentence_objects(tmp_path):
    lines = [FULL_HEADER] + [f"c{i % 2}\t{i}.mp3\ts\t{'Drie' if i == 3 else 'Hallo, Welt!'}\t\t2\t0\t\t\t\t\tde\t"
                             f"{'Benchmark' if i == 3 else ''}" for i in range(4)]
    rows = read_corpus_tsv(write_tsv(tmp_path / "validated.tsv", lines))
    assert [r.segment for r in rows] == ["", "", "", "Benchmark"]
    assert rows[0].client_id is rows[2].client_id and rows[0].client_id is sys.intern("c0")
    assert rows[0].sentence is rows[1].sentence and rows[0].text is rows[2].text and rows[2].text == "hallo welt"


def test_a_byte_that_is_not_utf8_is_named_by_its_line_far_into_the_file(tmp_path):
    good = "\t".join(["c", "x.mp3", "Ein ganz gewöhnlicher Satz.", "2", "0"])
    data = "\n".join(["client_id\tpath\tsentence\tup_votes\tdown_votes", *[good] * 5000]).encode() + b"\n"
    at = data.index(b"\n", len(data) // 2) + 5  # inside line 2502, far past the reader's first buffer
    line = data[:at].count(b"\n") + 1
    path = tmp_path / "validated.tsv"
    path.write_bytes(data[:at] + b"\xff" + data[at + 1:])
    with pytest.raises(CorpusError, match=rf"validated\.tsv line {line}: not UTF-8 text \(invalid start byte at byte {at}\)"):
        read_corpus_tsv(path)


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


@pytest.mark.parametrize(("sentence", "up", "down", "segment", "reason"), [
    ("goed zo", 2, 0, "", None),
    ("goed zo", 1, 0, "", "too_few_up_votes"),
    ("goed zo", 2, 3, "", "down_votes_not_below_up_votes"),
    ("?!", 2, 0, "", "empty_text"),
    ("er zijn 3 katten", 2, 0, "", "chars_outside_alphabet"),
    ("ça va", 2, 0, "", "chars_outside_alphabet"),
    ("Drie", 2, 0, "Benchmark", "segment"),
    ("?!", 2, 0, "Benchmark", "segment"),  # the segment is checked before the text
    ("Drie", 1, 0, "Benchmark", "too_few_up_votes"),  # and the votes before the segment
    ("goed zo", None, None, "", None),  # a source without votes (a Hugging Face dataset): no vote filter
    ("?!", None, None, "", "empty_text"),
])
def test_metadata_filters_in_their_order(sentence, up, down, segment, reason):
    u = Utterance("c", "x.mp3", sentence, normalise_text(sentence), up, down, segment=segment)
    assert metadata_reject_reason(u, "abcdefghijklmnopqrstuvwxyzëé'", min_up_votes=2, include_segments=False) == reason


def test_segment_rows_pass_when_included():
    u = Utterance("c", "x.mp3", "Drie", "drie", 2, 0, segment="Benchmark")
    assert metadata_reject_reason(u, "deir", min_up_votes=2, include_segments=True) is None


def test_filter_and_sample_counts_every_drop_and_is_seeded():
    rows = [Utterance("a", f"{i}.mp3", "x", "zin", up_votes=2, down_votes=0) for i in range(20)]
    rows += [Utterance("b", "low.mp3", "x", "zin", up_votes=1, down_votes=0),
             Utterance("b", "num.mp3", "3", "3", up_votes=2, down_votes=0),
             Utterance("b", "neg.mp3", "x", "zin", up_votes=2, down_votes=2),
             Utterance("b", "e.mp3", "", "", up_votes=2, down_votes=0),
             Utterance("b", "seg.mp3", "zin", "zin", up_votes=2, down_votes=0, segment="Benchmark")]
    sample = filter_and_sample(rows, "aeinz", min_up_votes=2, include_segments=False, n=5, seed="0-nl")
    assert sample.dropped == {"too_few_up_votes": 1, "chars_outside_alphabet": 1, "down_votes_not_below_up_votes": 1,
                              "empty_text": 1, "segment": 1}
    assert sample.passed == rows[:20] and len(sample.sampled) == 5 and set(sample.sampled) <= set(rows[:20])
    assert sample.sampled == filter_and_sample(rows, "aeinz", 2, False, 5, seed="0-nl").sampled
    assert sample.sampled != filter_and_sample(rows, "aeinz", 2, False, 5, seed="1-nl").sampled
    assert filter_and_sample(rows, "aeinz", 2, False, 50, seed="0-nl").sampled == rows[:20]  # fewer pass than n: all, in order
    assert filter_and_sample(rows, "aeinz", 2, True, 50, seed="0-nl").passed == rows[:20] + rows[-1:]


def test_filter_and_sample_with_nothing_left_returns_empty_lists():
    rows = [Utterance("a", f"{i}.mp3", "x", "zin", up_votes=0, down_votes=0) for i in range(3)]
    sample = filter_and_sample(rows, "aeinz", min_up_votes=2, include_segments=False, n=5, seed="0-nl")
    assert (sample.passed, sample.sampled, sample.dropped) == ([], [], {"too_few_up_votes": 3})


def test_split_tsv_round_trip_keeps_quotes(tmp_path):
    rows = [Utterance("c1", "a.mp3", 'Ze zei "ja".', "ze zei ja", duration_s=1.25)]
    write_split_tsv(tmp_path / "train.tsv", rows, extra=("duration_s",))
    (back,) = read_split_tsv(tmp_path / "train.tsv")
    assert (back.sentence, back.text, back.duration_s) == ('Ze zei "ja".', "ze zei ja", 1.25)


@pytest.mark.parametrize("bad", ["a\tb", "a\nb", "a\rb"])
def test_a_field_with_a_tab_or_line_break_is_refused_and_the_old_file_kept(tmp_path, bad):
    path = tmp_path / "train.tsv"
    write_split_tsv(path, [Utterance("c1", "a.mp3", "Een.", "een")])
    before = path.read_bytes()
    rows = [Utterance("c1", "b.mp3", "Twee.", "twee", line=3), Utterance("c2", "c.mp3", bad, "drie", line=7)]
    with pytest.raises(CorpusError, match=r"train\.tsv: c\.mp3 \(line 7 of its source\): a field holds a tab or line break"):
        write_split_tsv(path, rows)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["train.tsv"]


def test_a_bad_field_in_a_later_chunk_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "WRITE_ROWS", 2)  # rows 1-2, 3-4, 5: the bad row is in the third chunk
    rows = [Utterance("c", f"{i}.mp3", "Een.", "een", line=i + 2) for i in range(5)]
    rows[4] = Utterance("c", "4.mp3", "Een\tTwee.", "een twee", line=6)
    with pytest.raises(CorpusError, match=r"4\.mp3 \(line 6 of its source\)"):
        write_split_tsv(tmp_path / "train.tsv", rows)
    write_split_tsv(tmp_path / "train.tsv", rows[:4])
    assert [u.path for u in read_split_tsv(tmp_path / "train.tsv")] == ["0.mp3", "1.mp3", "2.mp3", "3.mp3"]


def test_a_ragged_row_after_an_empty_line_is_named_by_its_line(tmp_path):
    path = write_tsv(tmp_path / "validated.tsv", ["client_id\tpath\tsentence\tup_votes\tdown_votes",
                                                 "c\ta.mp3\tja\t2\t0", "", "d\tb.mp3\tnee\t2"])
    with pytest.raises(CorpusError, match=r"validated\.tsv line 4: 4 fields, header has 5"):
        read_corpus_tsv(path)


def test_split_file_bytes(tmp_path):
    write_split_tsv(tmp_path / "dev.tsv", [Utterance("c1", "a.mp3", 'Ze zei "ja".', "ze zei ja", duration_s=1.5)],
                    extra=("duration_s",))
    assert (tmp_path / "dev.tsv").read_bytes() == (b'path\tclient_id\tsentence\ttext\tduration_s\n'
                                                   b'a.mp3\tc1\tZe zei "ja".\tze zei ja\t1.5\n')


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


@FUZZ
@given(st.lists(st.tuples(CELL, CELL, CELL, st.integers(0, 9), st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"])),
                max_size=6), st.sampled_from(["\n", "\r\n", "\r"]))
def test_fuzz_metadata_reader_splits_lines_as_csv_does(tmp_path, rows, header_end):
    text = "client_id\tpath\tsentence\tup_votes\tdown_votes" + header_end
    text += "".join(f"{c}\t{p}\t{s}\t{v}\t0{end}" for c, p, s, v, end in rows)
    path = tmp_path / "validated.tsv"
    path.write_bytes(text.encode("utf-8"))
    expected = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    assert [[u.client_id, u.path, u.sentence, str(u.up_votes), str(u.down_votes)] for u in read_corpus_tsv(path)] == [
        row for row in expected if row]
