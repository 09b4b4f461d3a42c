"""Common Voice metadata: reading `validated.tsv`, the one text normaliser, metadata filters and the seeded
sample, the split TSVs, and the character vocabulary (the splits themselves: `forgetting/data/splits.py`).

Common Voice writes its TSVs tab-separated and unquoted: a sentence may hold a raw `"`, so every TSV here
is read and written as `csv.QUOTE_NONE` does. Older releases lack some columns; only `REQUIRED_COLUMNS` must
be present.
"""

from __future__ import annotations

import csv
import gc
import io
import itertools
import math
import random
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from forgetting.errors import REBUILD, InputError
from forgetting.io import atomic_path

REQUIRED_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes")
SEGMENT_COLUMN = "segment"  # newer releases: "Benchmark" marks the single-word segment rows

# Special tokens of the CTC vocabulary. [PAD] has id 0 and doubles as the CTC blank.
PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"

_APOSTROPHES = "’‘ʼ`´′"
_DASHES = "-‐‑‒–—―"
_STRAY_APOSTROPHE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])")  # not between two letters


class CorpusError(InputError):
    """A metadata file that cannot be read as Common Voice writes it; the message names file and line."""


@dataclass(frozen=True, slots=True)
class Utterance:
    """One metadata row. `line` is the 1-based line in the file it came from (the header is line 1).

    Votes are None when the source has none (a Hugging Face dataset); the vote filters then do not apply.
    `segment` is Common Voice's `segment` column ("" when absent or empty).
    """

    client_id: str
    path: str
    sentence: str
    text: str  # normalise_text(sentence)
    up_votes: int | None = None
    down_votes: int | None = None
    line: int = 0
    duration_s: float | None = None
    segment: str = ""


def _character_image(c: str) -> str:
    """What the normaliser makes of one lower-cased, NFC character, regardless of its neighbours: `'` for a
    typographic apostrophe, nothing for a formatting character (Cf), a space for a dash or for anything that is
    neither a letter or digit, a space, `'`, nor a combining mark; else the character itself."""
    if c in _APOSTROPHES:
        return "'"
    category = unicodedata.category(c)
    if category == "Cf":
        return ""
    if c in _DASHES:
        return " "
    return c if c.isalnum() or c.isspace() or c == "'" or category.startswith("M") else " "


# Latin-1 and General Punctuation hold most characters of real sentences: one `str.translate` maps them and the
# apostrophes and dashes (`ʼ` is a letter). Elsewhere only a character that is neither a letter, digit nor space
# can change: `_RARE` finds those.
_TRANSLATED = (range(0x100), range(0x2000, 0x2070))
_TRANSLATION = {ord(c): _character_image(c) or None
                for c in (*_APOSTROPHES, *_DASHES, *(chr(cp) for block in _TRANSLATED for cp in block))}
_RARE = re.compile("[^" + "".join(f"\\u{b.start:04x}-\\u{b.stop - 1:04x}" for b in _TRANSLATED) + r"\w\s]")


def normalise_text(sentence: str) -> str:
    """The normalisation applied to training targets, the vocabulary, and references and hypotheses.

    Lower-case, then Unicode NFC (lower-casing can decompose: `İ` becomes `i` + a combining dot); formatting
    characters (category Cf: soft hyphen, zero-width space and joiner, BOM) are deleted, so `Versiche\u00adrung`
    stays one word; a combining mark stays on its letter (the alphabet filter then decides). Typographic
    apostrophes become `'`, and an apostrophe survives only between two letters (`zo'n`, `geht's`; `'s avonds`
    becomes `s avonds`); hyphens and dashes separate words; every other punctuation mark or symbol is removed;
    runs of whitespace become one space. Digits are kept, so that the alphabet filter can reject them (a spoken
    number has no single spelling).
    """
    text = unicodedata.normalize("NFC", sentence.lower()).translate(_TRANSLATION)
    text = _RARE.sub(lambda match: _character_image(match[0]), text)
    if "'" in text:  # the look-around search costs more than all the rest
        text = _STRAY_APOSTROPHE.sub("", text)
    return " ".join(text.split())  # str.split() splits at what `\s` matches, and drops the ends


def read_corpus_tsv(path: Path) -> list[Utterance]:
    """Every row of a Common Voice metadata file (BOM and CRLF tolerated), normalised, in file order.

    Rows are read one at a time; client ids are interned, and each distinct sentence is stored and normalised
    once (rows of one sentence share its `sentence` and `text` objects).
    """
    try:
        with _cyclic_gc_paused(), open(path, encoding="utf-8-sig", newline="") as f:
            return _utterances(path, f)
    except UnicodeDecodeError as err:
        data = Path(path).read_bytes()
        whole = _decoding_error(data) or err  # the reader's error counts bytes from the start of its buffer
        line = data[: whole.start].count(b"\n") + 1
        raise CorpusError(f"{path} line {line}: not UTF-8 text ({whole.reason} at byte {whole.start})") from err


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector: it passes over every object made so far again and again as a million
    rows accumulate (a third of the read), and these objects hold no reference cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _fields(line: str) -> list[str]:
    """The fields of an unquoted tab-separated line, as `csv.reader(quoting=QUOTE_NONE)` reads them (none for an empty
    line) in half the time."""
    line = line.rstrip("\r\n")
    return line.split("\t") if line else []


def _utterances(path: Path, lines: Iterator[str]) -> list[Utterance]:
    """The rows after the header as Utterances; `path` only names the file in errors."""
    first_line = next(lines, None)
    if first_line is None:
        raise CorpusError(f"{path}: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}")
    header = _fields(first_line)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{path} line 1: missing column(s) {', '.join(missing)}; header is {header}")
    client, clip, said, up_col, down_col = (header.index(c) for c in REQUIRED_COLUMNS)
    segment = header.index(SEGMENT_COLUMN) if SEGMENT_COLUMN in header else None
    known: dict[str, tuple[str, str]] = {}  # sentence -> the sentence and text objects all its rows share
    utterances: list[Utterance] = []
    append, intern, columns = utterances.append, sys.intern, len(header)
    for line, raw in enumerate(lines, start=2):
        row = raw.rstrip("\r\n").split("\t")  # as _fields, inline: this loop runs a million times
        if len(row) != columns:
            if row == [""]:  # an empty line
                continue
            raise CorpusError(f"{path} line {line}: {len(row)} fields, header has {columns}")
        try:
            up, down = int(row[up_col] or 0), int(row[down_col] or 0)
        except ValueError as err:
            raise CorpusError(f"{path} line {line} ({row[clip]}): vote count is not an integer") from err
        said_text = row[said]
        shared = known.get(said_text)
        if shared is None:
            shared = known[said_text] = (said_text, normalise_text(said_text))
        append(Utterance(intern(row[client]), row[clip], shared[0], shared[1], up, down, line, None,  # no duration_s
                         intern(row[segment]) if segment is not None and row[segment] else ""))
    return utterances


def _decoding_error(data: bytes) -> UnicodeDecodeError | None:
    """The error of decoding `data` whole as UTF-8, or None when it decodes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err
    return None


SPLIT_COLUMNS = ("path", "client_id", "sentence", "text")
WRITE_ROWS = 10_000  # rows joined into one string and checked at once


def write_split_tsv(path: Path, utterances: Iterable[Utterance], extra: Sequence[str] = ()) -> None:
    """Write our own split files: `SPLIT_COLUMNS` plus `extra` attribute columns (e.g. `duration_s`), row by row
    into a temporary file that replaces `path` once complete (a field holding a tab or line break raises first)."""
    columns = (*SPLIT_COLUMNS, *extra)
    fields = attrgetter(*columns)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        rows = iter(utterances)
        while chunk := list(itertools.islice(rows, WRITE_ROWS)):
            text = "\n".join(["\t".join(map(str, fields(u))) for u in chunk]) + "\n"
            if text.count("\t") != len(chunk) * (len(columns) - 1) or text.count("\n") != len(chunk) or "\r" in text:
                _raise_for_unwritable(path, chunk, fields, len(columns))
            f.write(text)


def _raise_for_unwritable(path: Path, chunk: Sequence[Utterance], fields: attrgetter, columns: int) -> None:
    """Raise for the first row of `chunk` with a field holding a tab or line break."""
    for u in chunk:
        line = "\t".join(map(str, fields(u)))
        if line.count("\t") != columns - 1 or "\n" in line or "\r" in line:
            raise CorpusError(f"{path}: {u.path} (line {u.line} of its source): a field holds a tab or line break")
    raise AssertionError(f"{path}: a chunk failed the field check, but no row of it does")


def read_split_tsv(path: Path) -> list[Utterance]:
    """Read a file written by `write_split_tsv`: its header, rows of as many fields, a final line break. An empty,
    cut or foreign file raises CorpusError naming the file and the line, and what to run."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: cannot be read as UTF-8 text ({err}); {REBUILD}") from err
    if not text:
        raise CorpusError(f"{path}: empty file, expected a header {list(SPLIT_COLUMNS)}; {REBUILD}")
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    except csv.Error as err:
        raise CorpusError(f"{path}: not a tab-separated split file ({err}); {REBUILD}") from err
    header, extra = rows[0], rows[0][len(SPLIT_COLUMNS):]
    if tuple(header[: len(SPLIT_COLUMNS)]) != SPLIT_COLUMNS or extra not in ([], ["duration_s"]):
        raise CorpusError(f"{path} line 1: header {header}, expected {list(SPLIT_COLUMNS)} [+ duration_s]: not a split "
                          f"file of this pipeline; {REBUILD}")
    if not text.endswith("\n"):
        raise CorpusError(f"{path} line {len(rows)}: the file ends inside a row (cut short); {REBUILD}")
    utterances = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CorpusError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}; {REBUILD}")
        fields = dict(zip(header, row, strict=True))
        duration_s = None
        if extra:
            try:
                duration_s = float(fields["duration_s"])
            except ValueError:
                duration_s = float("nan")
            if not (math.isfinite(duration_s) and duration_s > 0):
                raise CorpusError(f"{path} line {line} ({fields['path']}): duration_s {fields['duration_s']!r} is not a "
                                  f"positive number of seconds; {REBUILD}")
        utterances.append(Utterance(fields["client_id"], fields["path"], fields["sentence"], fields["text"], line=line,
                                    duration_s=duration_s))
    return utterances


def metadata_reject_reason(u: Utterance, alphabet: str, min_up_votes: int, include_segments: bool) -> str | None:
    """Why a row fails the metadata filters, or None. Reasons are stable strings used as metric keys.

    Checked in this order: votes (only where the source has votes), a segment row (a non-empty `segment`) unless
    `include_segments`, then the text: empty after normalisation, or holding a character outside `alphabet`.
    """
    if u.up_votes is not None and u.up_votes < min_up_votes:
        return "too_few_up_votes"
    if u.up_votes is not None and u.down_votes is not None and u.down_votes >= u.up_votes:
        return "down_votes_not_below_up_votes"
    if u.segment and not include_segments:
        return "segment"
    if not u.text:
        return "empty_text"
    if u.text.strip(alphabet + " "):  # what is left once the letters of the alphabet are stripped from both ends
        return "chars_outside_alphabet"
    return None


@dataclass(frozen=True)
class Sample:
    """The rows that passed the metadata filters, the seeded sample drawn from them, and the drops by reason."""

    passed: list[Utterance]
    sampled: list[Utterance]
    dropped: Counter[str]


def filter_and_sample(rows: Sequence[Utterance], alphabet: str, min_up_votes: int, include_segments: bool, n: int,
                      seed: str) -> Sample:
    """The rows that pass `metadata_reject_reason`, in file order, and `n` of them drawn with `random.Random(seed)`
    (all of them, in file order, when no more than `n` pass; none when none pass)."""
    dropped: Counter[str] = Counter()
    passed = []
    for row in rows:
        reason = metadata_reject_reason(row, alphabet, min_up_votes, include_segments)
        if reason:
            dropped[reason] += 1
        else:
            passed.append(row)
    sampled = passed if len(passed) <= n else random.Random(seed).sample(passed, n)
    return Sample(passed, sampled, dropped)


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """The CTC vocabulary in `Wav2Vec2CTCTokenizer`'s format: [PAD]=0 (the blank), [UNK], `|`, then letters."""
    letters = sorted({c for text in texts for c in text} - {" "})
    return {token: i for i, token in enumerate([PAD, UNK, WORD_DELIMITER, *letters])}
