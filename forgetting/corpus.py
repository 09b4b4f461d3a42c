"""Common Voice metadata: reading `validated.tsv`, the one text normaliser, metadata filters and the seeded
sample, speaker-disjoint splits, the split TSVs, and the character vocabulary.

Common Voice writes its TSVs tab-separated and unquoted: a sentence may hold a raw `"`, so every TSV here
is read and written with `csv.QUOTE_NONE`. Older releases lack some columns; only `REQUIRED_COLUMNS` must
be present.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from forgetting.errors import REBUILD, InputError
from forgetting.io import atomic_write_text

REQUIRED_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes")

# Special tokens of the CTC vocabulary. [PAD] has id 0 and doubles as the CTC blank.
PAD, UNK, WORD_DELIMITER = "[PAD]", "[UNK]", "|"

_APOSTROPHES = str.maketrans({c: "'" for c in "’‘ʼ`´′"})
_DASHES = re.compile(r"[-‐‑‒–—―]")
_STRAY_APOSTROPHE = re.compile(r"(?<![^\W\d_])'|'(?![^\W\d_])")  # not between two letters
_SPACES = re.compile(r"\s+")


class CorpusError(InputError):
    """A metadata file that cannot be read as Common Voice writes it; the message names file and line."""


@dataclass(frozen=True)
class Utterance:
    """One metadata row. `line` is the 1-based line in the file it came from (the header is line 1)."""

    client_id: str
    path: str
    sentence: str
    text: str  # normalise_text(sentence)
    up_votes: int = 0
    down_votes: int = 0
    line: int = 0
    duration_s: float | None = None


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
    text = unicodedata.normalize("NFC", sentence.lower()).translate(_APOSTROPHES)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = _DASHES.sub(" ", text)
    text = "".join(c if c.isalnum() or c.isspace() or c == "'" or unicodedata.category(c).startswith("M") else " "
                   for c in text)
    text = _STRAY_APOSTROPHE.sub("", text)
    return _SPACES.sub(" ", text).strip()


def read_corpus_tsv(path: Path) -> list[Utterance]:
    """Every row of a Common Voice metadata file (BOM and CRLF tolerated), normalised, in file order."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as err:
        line = Path(path).read_bytes()[: err.start].count(b"\n") + 1
        raise CorpusError(f"{path} line {line}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise CorpusError(f"{path}: not a tab-separated metadata file ({err})") from err
    if not rows:
        raise CorpusError(f"{path}: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}")
    header = rows[0]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{path} line 1: missing column(s) {', '.join(missing)}; header is {header}")
    col = {name: header.index(name) for name in REQUIRED_COLUMNS}
    utterances = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CorpusError(f"{path} line {line}: {len(row)} fields, header has {len(header)}")
        try:
            up, down = int(row[col["up_votes"]] or 0), int(row[col["down_votes"]] or 0)
        except ValueError as err:
            raise CorpusError(f"{path} line {line} ({row[col['path']]}): vote count is not an integer") from err
        sentence = row[col["sentence"]]
        utterances.append(Utterance(row[col["client_id"]], row[col["path"]], sentence, normalise_text(sentence), up, down, line))
    return utterances


SPLIT_COLUMNS = ("path", "client_id", "sentence", "text")


def write_split_tsv(path: Path, utterances: Iterable[Utterance], extra: Sequence[str] = ()) -> None:
    """Write our own split files: `SPLIT_COLUMNS` plus `extra` attribute columns (e.g. `duration_s`)."""
    columns = (*SPLIT_COLUMNS, *extra)
    lines = ["\t".join(columns)]
    for u in utterances:
        fields = [str(getattr(u, c)) for c in columns]
        if any("\t" in f or "\n" in f or "\r" in f for f in fields):
            raise CorpusError(f"{path}: {u.path} (line {u.line} of its source): a field holds a tab or line break")
        lines.append("\t".join(fields))
    atomic_write_text(path, "\n".join(lines) + "\n")


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


def metadata_reject_reason(u: Utterance, alphabet: str, min_up_votes: int) -> str | None:
    """Why a row fails the metadata filters, or None. Reasons are stable strings used as metric keys."""
    if u.up_votes < min_up_votes:
        return "too_few_up_votes"
    if u.down_votes >= u.up_votes:
        return "down_votes_not_below_up_votes"
    if not u.text:
        return "empty_text"
    if set(u.text) - set(alphabet) - {" "}:
        return "chars_outside_alphabet"
    return None


@dataclass(frozen=True)
class Sample:
    """The rows that passed the metadata filters, the seeded sample drawn from them, and the drops by reason."""

    passed: list[Utterance]
    sampled: list[Utterance]
    dropped: Counter[str]


def filter_and_sample(rows: Sequence[Utterance], alphabet: str, min_up_votes: int, n: int, seed: str) -> Sample:
    """The rows that pass `metadata_reject_reason`, in file order, and `n` of them drawn with `random.Random(seed)`
    (all of them, in file order, when no more than `n` pass)."""
    dropped: Counter[str] = Counter()
    passed = []
    for row in rows:
        reason = metadata_reject_reason(row, alphabet, min_up_votes)
        if reason:
            dropped[reason] += 1
        else:
            passed.append(row)
    sampled = passed if len(passed) <= n else random.Random(seed).sample(passed, n)
    return Sample(passed, sampled, dropped)


def split_by_speaker(utterances: Sequence[Utterance], fractions: dict[str, float], seed: int) -> dict[str, list[Utterance]]:
    """Assign whole speakers (`client_id`) to splits so utterance counts approach `fractions`.

    Speakers are shuffled with `seed`; each split first receives one speaker, then every further speaker
    goes to the split furthest below its target. No speaker is in two splits. Needs >= len(fractions)
    speakers.
    """
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.client_id, []).append(u)
    speakers = sorted(by_speaker)
    if len(speakers) < len(fractions):
        raise CorpusError(f"{len(speakers)} speaker(s) cannot fill {len(fractions)} speaker-disjoint splits")
    random.Random(seed).shuffle(speakers)
    splits: dict[str, list[Utterance]] = {name: [] for name in fractions}
    total = len(utterances)
    for i, speaker in enumerate(speakers):
        if i < len(fractions):
            name = sorted(fractions, key=fractions.get)[i]  # smallest splits first, so dev/test are not empty
        else:
            name = max(fractions, key=lambda s: fractions[s] * total - len(splits[s]))
        splits[name].extend(by_speaker[speaker])
    return splits


def build_vocab(texts: Iterable[str]) -> dict[str, int]:
    """The CTC vocabulary in `Wav2Vec2CTCTokenizer`'s format: [PAD]=0 (the blank), [UNK], `|`, then letters."""
    letters = sorted({c for text in texts for c in text} - {" "})
    return {token: i for i, token in enumerate([PAD, UNK, WORD_DELIMITER, *letters])}
