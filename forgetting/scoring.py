"""Scoring: WER and CER (jiwer) per utterance and per corpus, bootstrap confidence intervals, the
continual-learning metrics derived from several models, and the per-utterance predictions TSV (written by the
eval stage, read back by the report).

References are the normalised texts of the split files; hypotheses go through the same `normalise_text`.
A corpus rate is total errors over total reference units (words; characters, spaces included), which is
what jiwer computes over a list of sentences.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from forgetting.errors import InputError
from forgetting.io import atomic_path

_CHUNK_ENTRIES = 1 << 22  # resampled indices held at once by the bootstrap


class ScoringError(InputError):
    """Scores that cannot be compared; the message names the systems and the utterance."""


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance's edit counts: errors = substitutions + deletions + insertions."""

    path: str
    reference: str
    hypothesis: str
    word_errors: int
    ref_words: int
    char_errors: int
    ref_chars: int


SCORE_COLUMNS = tuple(f.name for f in dataclasses.fields(UtteranceScore))


@dataclass(frozen=True)
class Estimate:
    """A fraction (None when missing) and its 95 % interval where one is known."""

    value: float | None
    interval: tuple[float, float] | None = None


def score_utterance(path: str, reference: str, hypothesis: str) -> UtteranceScore:
    """Word and character edit counts of `hypothesis` against a non-empty `reference` (both normalised)."""
    if not reference:
        raise ScoringError(f"{path}: empty reference")
    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    return UtteranceScore(
        path, reference, hypothesis,
        word_errors=words.substitutions + words.deletions + words.insertions,
        ref_words=words.hits + words.substitutions + words.deletions,
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        ref_chars=chars.hits + chars.substitutions + chars.deletions,
    )


def error_rates(scores: Sequence[UtteranceScore], samples: int = 0, seed: int = 0) -> dict[str, float | int]:
    """Corpus `wer` and `cer` of `scores`, their number of `utterances`, and with `samples` > 0 the bootstrap
    95% interval of the WER as `wer_ci_low`, `wer_ci_high`."""
    rates: dict[str, float | int] = {
        "wer": sum(s.word_errors for s in scores) / sum(s.ref_words for s in scores),
        "cer": sum(s.char_errors for s in scores) / sum(s.ref_chars for s in scores),
        "utterances": len(scores),
    }
    if samples:
        rates["wer_ci_low"], rates["wer_ci_high"] = bootstrap_ci([s.word_errors for s in scores],
                                                                 [s.ref_words for s in scores], samples, seed)
    return rates


def _resampled_rates(errors: np.ndarray, units: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Corpus rates sum(errors)/sum(units) over `samples` resamples of the utterances (with replacement).

    `errors` is (systems, utterances), `units` (utterances,); returns (samples, systems).
    """
    if samples < 1:
        raise ScoringError(f"bootstrap needs >= 1 resample, got {samples}")
    n = units.shape[0]
    rng = np.random.default_rng(seed)
    rates = []
    chunk = max(1, _CHUNK_ENTRIES // n)
    for start in range(0, samples, chunk):
        index = rng.integers(0, n, size=(min(samples - start, chunk), n))  # (chunk, utterances)
        rates.append(errors[:, index].sum(-1).T / units[index].sum(-1)[:, None])
    return np.concatenate(rates)


def bootstrap_ci(word_errors: Sequence[int], ref_words: Sequence[int], samples: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the corpus WER, resampling utterances `samples` times (seeded)."""
    rates = _resampled_rates(np.asarray([word_errors], dtype=float), np.asarray(ref_words, dtype=float), samples, seed)
    low, high = np.percentile(rates[:, 0], [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap_ci(errors_a: Sequence[int], errors_b: Sequence[int], ref_words: Sequence[int], samples: int,
                        seed: int) -> tuple[float, float]:
    """95% percentile interval of WER(b) - WER(a) for two systems scored on the same utterances: each resample
    draws the same utterances for both, so the interval reflects the difference, not each system's spread."""
    rates = _resampled_rates(np.asarray([errors_a, errors_b], dtype=float), np.asarray(ref_words, dtype=float), samples, seed)
    low, high = np.percentile(rates[:, 1] - rates[:, 0], [2.5, 97.5])
    return float(low), float(high)


def paired_change(first: Sequence[UtteranceScore], second: Sequence[UtteranceScore], samples: int,
                  seed: int) -> dict[str, float]:
    """WER and CER of `second` minus those of `first` (same utterances), with the paired bootstrap interval of the WER change."""
    if len(first) != len(second):
        raise ScoringError(f"paired scores differ in their utterances: {len(first)} against {len(second)}")
    for a, b in zip(first, second, strict=True):
        if a.path != b.path:
            raise ScoringError(f"paired scores differ in their utterances: {a.path} against {b.path}")
    before, after = error_rates(first), error_rates(second)
    change = {"wer": after["wer"] - before["wer"], "cer": after["cer"] - before["cer"]}
    if samples:
        change["wer_ci_low"], change["wer_ci_high"] = paired_bootstrap_ci(
            [s.word_errors for s in first], [s.word_errors for s in second], [s.ref_words for s in first], samples, seed)
    return change


def derived_metrics(scores: Mapping[str, Mapping[str, Sequence[UtteranceScore]]], before: str, after: str, source: str,
                    target: str, samples: int, seed: int) -> dict[str, object]:
    """The continual-learning metrics, from `scores[model][language]`; empty unless `before` and `after` exist.

    `forgetting[source]` = error on the source language after minus before (positive = forgotten);
    `learning[target]` = error on the target language before minus after (positive = learnt); each with the
    paired bootstrap 95% interval of its WER part when `samples` > 0. `awer` = mean WER over both languages
    after adaptation; `bwt` = backward transfer as CL-MASR defines it for two tasks, WER on the source before
    minus after (negative = forgetting).
    """
    if before not in scores or after not in scores:
        return {}
    forgetting = paired_change(scores[before][source], scores[after][source], samples, seed)
    learning = paired_change(scores[after][target], scores[before][target], samples, seed)  # before - after
    after_wer = [error_rates(scores[after][lang])["wer"] for lang in (source, target)]
    return {
        "forgetting": {source: forgetting},
        "learning": {target: learning},
        "awer": float(np.mean(after_wer)),
        "bwt": -forgetting["wer"],
    }


def write_scores_tsv(path: Path, scores: Sequence[UtteranceScore]) -> None:
    """Per-utterance scores as an unquoted TSV of SCORE_COLUMNS (normalised text holds no tabs), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(SCORE_COLUMNS)
        writer.writerows(dataclasses.astuple(s) for s in scores)


def read_predictions(text: str, source: str) -> list[UtteranceScore]:
    """Parse a per-utterance predictions TSV as the eval stage writes it (unquoted, header `SCORE_COLUMNS`)."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if tuple(header or ()) != SCORE_COLUMNS:
        raise ValueError(f"{source}: header must be {list(SCORE_COLUMNS)}, got {header}")
    scores = []
    for line, row in enumerate(reader, start=2):
        try:
            path, reference, hypothesis, *counts = row
            scores.append(UtteranceScore(path, reference, hypothesis, *(int(c) for c in counts)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source} line {line}: expected {len(SCORE_COLUMNS)} columns ending in 4 integer counts, "
                             f"got {row!r}") from err
    if sum(s.ref_words for s in scores) == 0:
        raise ValueError(f"{source}: no utterances with reference words")
    return scores
