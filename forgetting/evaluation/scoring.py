"""Scoring: WER and CER (jiwer) per utterance and per corpus; bootstrap intervals over speakers and training seeds;
paired differences with the Wilcoxon signed-rank test; the continual-learning metrics; and the per-utterance
predictions TSV (written by the eval stage, read back by the report).

References are the normalised texts of the split files; hypotheses go through the same `normalise_text`. A corpus
rate is total errors over total reference units (words; characters, spaces included), which is what jiwer computes
over a list of sentences. Rates are fractions (0.123).

Intervals are 95 % percentile bootstraps of such rates; one set of resamples serves WER and CER.
- `method="speaker"` (a cluster bootstrap): each resample draws as many speakers (`client_id`) as the test set
  holds, with replacement, and keeps every utterance of each drawn speaker. A speaker's utterances are correlated
  (voice, microphone, reading), so resampling utterances one by one gives intervals that are too narrow: when each
  speaker's utterances share one error rate, the speaker bootstrap of N speakers × k utterances is the bootstrap of
  N one-utterance speakers, about √k times wider than the utterance bootstrap of the same data.
- `method="utterance"`: each utterance is its own cluster, as if utterances were independent.
- A test set with fewer than `min_speakers` speakers gets no interval, whatever the method, and a `note` instead:
  a handful of speakers cannot stand for the speaker population.
- Paired differences (forgetting, learning, one experiment against another) draw the same clusters for both
  systems, so the interval is that of the difference, not of each system's spread.
- Seed groups (runs that differ only in a training seed; one experiment is a group of one): a two-level bootstrap.
  Each resample draws the clusters once (the same speakers for every seed and system) and, per group, as many of
  its seeds as it has, with replacement; the statistic is the mean over the drawn seeds of the rate on the drawn
  clusters, so the interval covers speaker and seed variation together. The two models of one experiment (before
  and after adaptation) come from one run and share its seed draw; two groups draw their seeds independently.

The paired test is scipy's two-sided Wilcoxon signed-rank test on per-speaker error rates (a speaker's errors over
its reference units; for a seed group, averaged over its seeds), zero differences dropped (`zero_method="wilcox"`),
with scipy's choice of null distribution (exact up to 50 speakers without ties or zeros, else a permutation up to
13 and the normal approximation above).
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
from scipy import stats

from forgetting.errors import InputError
from forgetting.io import atomic_path

BOOTSTRAP_METHODS = ("speaker", "utterance")
LEVEL = 0.95  # of every interval
RATES = ("wer", "cer")  # the rows of every count array: words, then characters
_CHUNK_ENTRIES = 1 << 22  # resampled cluster counts held at once by the bootstrap


class ScoringError(InputError):
    """Scores that cannot be compared; the message names the systems and the utterance."""


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance's edit counts: errors = substitutions + deletions + insertions; `client_id` is its speaker."""

    path: str
    client_id: str
    reference: str
    hypothesis: str
    word_errors: int
    ref_words: int
    char_errors: int
    ref_chars: int


SCORE_COLUMNS = tuple(f.name for f in dataclasses.fields(UtteranceScore))
Runs = Sequence[Sequence[UtteranceScore]]
"""One system's scores per training seed of its group, every run on the same utterances in the same order."""


@dataclass(frozen=True)
class Estimate:
    """A fraction (None when missing) and what is known of its uncertainty: the 95 % `interval`, the standard deviation
    `sd` over a group's seeds, the Wilcoxon `p` of a difference, and a `note` where an interval was withheld."""

    value: float | None
    interval: tuple[float, float] | None = None
    sd: float | None = None
    p: float | None = None
    note: str | None = None


def score_utterance(path: str, client_id: str, reference: str, hypothesis: str) -> UtteranceScore:
    """Word and character edit counts of `hypothesis` against a non-empty `reference` (both normalised)."""
    if not reference:
        raise ScoringError(f"{path}: empty reference")
    words = jiwer.process_words(reference, hypothesis)
    chars = jiwer.process_characters(reference, hypothesis)
    return UtteranceScore(
        path, client_id, reference, hypothesis,
        word_errors=words.substitutions + words.deletions + words.insertions,
        ref_words=words.hits + words.substitutions + words.deletions,
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        ref_chars=chars.hits + chars.substitutions + chars.deletions,
    )


def interval_record(samples: int, method: str, min_speakers: int) -> dict[str, float | int | str]:
    """How the metrics' intervals were drawn, for the top-level `interval` entry of the metrics."""
    _check_method(method)
    return {"method": method, "samples": samples, "level": LEVEL, "min_speakers": min_speakers}


def _check_method(method: str) -> None:
    if method not in BOOTSTRAP_METHODS:
        raise ScoringError(f"eval.bootstrap: must be one of {', '.join(BOOTSTRAP_METHODS)}, got {method!r}")


def _draw_counts(rng: np.random.Generator, items: int, draws: int) -> np.ndarray:
    """(draws, items): how often each item is picked when `items` picks are made with replacement, per draw."""
    index = rng.integers(0, items, size=(draws, items)) + items * np.arange(draws)[:, None]
    return np.bincount(index.ravel(), minlength=draws * items).reshape(draws, items).astype(float)


def resample_rates(errors: Sequence[np.ndarray], units: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The two-level bootstrap (module docstring): (samples, groups, stats) resampled rates.

    `errors[g]` is group g's error totals per cluster, (seeds, stats, clusters); `units` the reference totals,
    (stats, clusters), shared by every group. The clusters and each group's seeds come from their own seeded streams,
    so a result depends on neither the other groups nor the chunking.
    """
    if samples < 1:
        raise ScoringError(f"bootstrap needs >= 1 resample, got {samples}")
    clusters = units.shape[-1]
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(1 + len(errors))]
    chunk, rates = max(1, _CHUNK_ENTRIES // clusters), []
    for start in range(0, samples, chunk):
        drawn = _draw_counts(streams[0], clusters, min(chunk, samples - start))  # (chunk, clusters)
        unit_sums = units @ drawn.T  # (stats, chunk)
        groups = []
        for group, stream in zip(errors, streams[1:], strict=True):
            per_seed = (group @ drawn.T) / unit_sums  # (seeds, stats, chunk)
            seed_weights = _draw_counts(stream, group.shape[0], drawn.shape[0]) / group.shape[0]  # (chunk, seeds)
            groups.append(np.einsum("cs,skc->ck", seed_weights, per_seed))
        rates.append(np.stack(groups, axis=1))
    return np.concatenate(rates)


def _check_paired(runs: Sequence[Sequence[UtteranceScore]]) -> None:
    """Every run scores the same utterances, in the same order, of the same speakers and references."""
    first = runs[0]
    for other in runs[1:]:
        if len(other) != len(first):
            raise ScoringError(f"paired scores differ in their utterances: {len(first)} against {len(other)}")
        for a, b in zip(first, other, strict=True):
            if a.path != b.path:
                raise ScoringError(f"paired scores differ in their utterances: {a.path} against {b.path}")
            if (a.client_id, a.reference) != (b.client_id, b.reference):
                raise ScoringError(f"paired scores of {a.path} differ in speaker or reference: "
                                   f"{(a.client_id, a.reference)} against {(b.client_id, b.reference)}")


def _counts(scores: Sequence[UtteranceScore]) -> tuple[np.ndarray, np.ndarray]:
    """(2, utterances) errors and reference units, words then characters."""
    errors = np.array([[s.word_errors for s in scores], [s.char_errors for s in scores]], dtype=float)
    units = np.array([[s.ref_words for s in scores], [s.ref_chars for s in scores]], dtype=float)
    return errors, units


def _clusters(scores: Sequence[UtteranceScore], method: str) -> np.ndarray:
    """(utterances,) the cluster index of each utterance: speakers numbered in order of first appearance, or one
    cluster per utterance."""
    keys = [s.client_id for s in scores] if method == "speaker" else range(len(scores))
    index: dict[object, int] = {}
    return np.array([index.setdefault(key, len(index)) for key in keys])


def _by_cluster(values: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """(..., utterances) values summed per cluster: (..., clusters)."""
    rows = values.reshape(-1, values.shape[-1])
    sums = [np.bincount(cluster, weights=row, minlength=cluster.max() + 1) for row in rows]
    return np.stack(sums).reshape(*values.shape[:-1], -1)


def combine(systems: Sequence[Runs], weights: Sequence[float], samples: int, seed: int, method: str, min_speakers: int,
            shared_seeds: bool) -> dict[str, float | int | str]:
    """Σᵢ weights[i]·(system i's rate, averaged over its runs), for WER and CER, with their intervals.

    Every run of every system must score the same utterances. `shared_seeds`: run s of every system comes from one
    training run (the models before and after adaptation), so one seed draw serves all; else each system draws its
    own. Returns `wer`, `cer`, `speakers`, and `<rate>_ci_low`/`_ci_high` when `samples` > 0, or a `note` when the
    test set has fewer than `min_speakers` speakers.
    """
    _check_method(method)
    _check_paired([run for runs in systems for run in runs])
    if shared_seeds and len({len(runs) for runs in systems}) > 1:
        raise ScoringError(f"systems that share their seeds need as many runs each, got {[len(r) for r in systems]}")
    first = systems[0][0]
    errors = [np.stack([_counts(run)[0] for run in runs]) for runs in systems]  # each (seeds, 2, utterances)
    units = _counts(first)[1]
    values = sum(w * (e.sum(-1) / units.sum(-1)).mean(0) for w, e in zip(weights, errors, strict=True))
    speakers = len({s.client_id for s in first})
    result: dict[str, float | int | str] = {rate: float(values[k]) for k, rate in enumerate(RATES)}
    result["speakers"] = speakers
    if samples and speakers < min_speakers:
        result["note"] = f"no interval: {speakers} speakers, fewer than eval.min_speakers = {min_speakers}"
    elif samples:
        cluster = _clusters(first, method)
        errors = [_by_cluster(e, cluster) for e in errors]  # each (seeds, 2, clusters)
        if shared_seeds:  # one group whose stats are every system's two rates: (seeds, 2 * systems, clusters)
            errors = [np.concatenate(errors, axis=1)]
        units = np.tile(_by_cluster(units, cluster), (errors[0].shape[1] // len(RATES), 1))
        drawn = resample_rates(errors, units, samples, seed).reshape(samples, len(systems), len(RATES))
        combined = np.einsum("i,sik->sk", np.asarray(weights, dtype=float), drawn)
        for k, rate in enumerate(RATES):
            low, high = np.percentile(combined[:, k], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
            result[f"{rate}_ci_low"], result[f"{rate}_ci_high"] = float(low), float(high)
    return result


def error_rates(scores: Sequence[UtteranceScore], samples: int = 0, seed: int = 0, method: str = "speaker",
                min_speakers: int = 1) -> dict[str, float | int | str]:
    """Corpus `wer` and `cer` of `scores` with their intervals (see `combine`), `utterances` and `speakers`."""
    rates = combine([[scores]], [1.0], samples, seed, method, min_speakers, shared_seeds=True)
    speakers = rates.pop("speakers")
    return rates | {"utterances": len(scores), "speakers": speakers}


def paired_change(first: Sequence[UtteranceScore], second: Sequence[UtteranceScore], samples: int, seed: int,
                  method: str = "speaker", min_speakers: int = 1) -> dict[str, float | int | str]:
    """WER and CER of `second` minus those of `first` (one run, same utterances), with paired intervals."""
    change = combine([[first], [second]], [-1.0, 1.0], samples, seed, method, min_speakers, shared_seeds=True)
    del change["speakers"]
    return change


def speaker_rates(runs: Runs) -> np.ndarray:
    """(2, speakers) per-speaker WER and CER (a speaker's errors over its units), averaged over `runs`; speakers in
    order of first appearance."""
    _check_paired(runs)
    cluster = _clusters(runs[0], "speaker")
    units = _by_cluster(_counts(runs[0])[1], cluster)
    return np.mean([_by_cluster(_counts(run)[0], cluster) / units for run in runs], axis=0)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired `differences` (scipy; zeros dropped); 1.0 when all are zero.

    Rounded to 12 decimals first, so differences equal in exact arithmetic tie as they should."""
    rounded = np.round(np.asarray(differences, dtype=float), 12)
    if not rounded.any():
        return 1.0
    return float(stats.wilcoxon(rounded, zero_method="wilcox", alternative="two-sided").pvalue)


def compare_runs(first: Runs, second: Runs, samples: int, seed: int, method: str,
                 min_speakers: int) -> dict[str, float | int | str]:
    """`second` minus `first` (two groups of runs on the same utterances, seeds drawn independently): `wer`, `cer`,
    their paired intervals, `speakers`, and the Wilcoxon `wer_p`, `cer_p` on per-speaker rates averaged over each
    group's seeds; the intervals and the p-values are withheld (with a `note`) below `min_speakers` speakers."""
    result = combine([first, second], [-1.0, 1.0], samples, seed, method, min_speakers, shared_seeds=False)
    if int(result["speakers"]) >= min_speakers:
        difference = speaker_rates(second) - speaker_rates(first)
        result |= {f"{rate}_p": wilcoxon_p(difference[k]) for k, rate in enumerate(RATES)}
    elif "note" not in result:
        result["note"] = f"no test: {result['speakers']} speakers, fewer than eval.min_speakers = {min_speakers}"
    return result


def derived_metrics(scores: Mapping[str, Mapping[str, Sequence[UtteranceScore]]], before: str, after: str, source: str,
                    target: str, samples: int, seed: int, method: str = "speaker",
                    min_speakers: int = 1) -> dict[str, object]:
    """The continual-learning metrics, from `scores[model][language]`; empty unless `before` and `after` exist.

    `forgetting[source]` = error on the source language after minus before (positive = forgotten);
    `learning[target]` = error on the target language before minus after (positive = learnt); each with paired
    intervals of its WER and CER parts when `samples` > 0. `awer` = mean WER over both languages after adaptation;
    `bwt` = backward transfer as CL-MASR defines it for two tasks, WER on the source before minus after
    (negative = forgetting).
    """
    if before not in scores or after not in scores:
        return {}
    forgetting = paired_change(scores[before][source], scores[after][source], samples, seed, method, min_speakers)
    learning = paired_change(scores[after][target], scores[before][target], samples, seed, method, min_speakers)
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
    header = tuple(next(reader, None) or ())
    if header and "client_id" not in header:
        raise ScoringError(f"{source}: no client_id column (written before speaker-level intervals); re-run eval "
                           "(`dvc repro eval`, or `dvc exp run` for an experiment) to write it")
    if header != SCORE_COLUMNS:
        raise ScoringError(f"{source}: header must be {list(SCORE_COLUMNS)}, got {list(header)}")
    scores = []
    for line, row in enumerate(reader, start=2):
        try:
            path, client_id, reference, hypothesis, *counts = row
            scores.append(UtteranceScore(path, client_id, reference, hypothesis, *(int(c) for c in counts)))
        except (TypeError, ValueError) as err:
            raise ScoringError(f"{source} line {line}: expected {len(SCORE_COLUMNS)} columns ending in 4 integer counts, "
                               f"got {row!r}") from err
    if sum(s.ref_words for s in scores) == 0:
        raise ScoringError(f"{source}: no utterances with reference words")
    return scores
