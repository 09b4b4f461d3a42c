"""Each seed group's estimates and the paired comparisons between groups, recomputed from the experiments'
per-utterance predictions. Rendering is in `forgetting.evaluation.render`, figures in
`forgetting.evaluation.figures`, the statistics in `forgetting.evaluation.scoring`.

Error rates are fractions (0.123). A group's value is the mean of its members' metrics, with their standard deviation
(ddof 1) and the two-level bootstrap interval over seeds and speakers of `forgetting.evaluation.scoring`. Intervals
are recomputed from the per-utterance predictions with the group's own `seed`, `eval.bootstrap`, `eval.min_speakers`
and, unless the report names other resamples, `eval.bootstrap_samples`: so a lone experiment's intervals equal those
in its metrics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgetting.evaluation.experiments import Group, PredictionSource, ResultsError, lookup
from forgetting.evaluation.scoring import (
    RATES,
    Estimate,
    ScoringError,
    UtteranceScore,
    combine,
    compare_runs,
    error_rates,
    read_predictions,
)
from forgetting.layout import LANGUAGES, MODELS, SOURCE, TARGET, predictions_name

# (metrics key, Markdown header), from the eval stage's reports/metrics.json
METRIC_COLUMNS = (
    *((f"{model}.{lang}.{rate}", f"{lang} {rate.upper()} {'before' if model == MODELS[0] else 'after'} (%)")
      for lang in LANGUAGES for rate in RATES for model in MODELS),
    *((f"forgetting.{SOURCE}.{rate}", f"forgetting {SOURCE} {rate.upper()} (pp)") for rate in RATES),
    *((f"learning.{TARGET}.{rate}", f"learning {TARGET} {rate.upper()} (pp)") for rate in RATES),
    ("awer", "AWER (%)"),
)

COMPARISON_COLUMNS = tuple((f"{lang}.{rate}", f"{lang} {rate.upper()} (pp)") for lang in LANGUAGES for rate in RATES)

Row = dict[str, Estimate]


@dataclass(frozen=True)
class Comparison:
    """`first` minus `second` after adaptation, by COMPARISON_COLUMNS key (`nl.wer`): the difference of their error
    rates (seed means) on the same test utterances, its paired interval and the Wilcoxon p."""

    first: Group
    second: Group
    cells: dict[str, Estimate]


@dataclass(frozen=True)
class _Resampling:
    samples: int
    seed: int
    method: str
    min_speakers: int


def _resampling(group: Group, samples: int | None) -> _Resampling | str:
    """The group's bootstrap settings from its params (resamples overridden by `samples`), or why there are none."""
    values = {key: group.param(key) for key in ("seed", "eval.bootstrap_samples", "eval.bootstrap", "eval.min_speakers")}
    if samples is not None:
        values["eval.bootstrap_samples"] = samples
    missing = [key for key, value in values.items() if value is None]
    if missing:
        return f"{group.name}: no {', '.join(missing)} in its params (run before speaker-level intervals): no intervals"
    return _Resampling(*(int(values[k]) for k in ("eval.bootstrap_samples", "seed")), str(values["eval.bootstrap"]),
                       int(values["eval.min_speakers"]))


def _read_runs(group: Group, model: str, lang: str, source: PredictionSource) -> tuple[list[list[UtteranceScore]] | None, str]:
    """Every member's scores of `model` on `lang`, checked against its metrics; or None and why they cannot be used."""
    file, runs = predictions_name(model, lang), []
    for e in group.members:
        text = source(e, file)
        if text is None:
            return None, f"{e.name}: {file} not readable"
        try:
            scores = read_predictions(text, f"{e.name}:{file}")
        except ScoringError as err:
            return None, str(err)
        wer, recorded = error_rates(scores)["wer"], e.metric(f"{model}.{lang}.wer")
        if recorded is not None and abs(wer - recorded) > 1e-6:  # stale or foreign predictions
            return None, f"{e.name}: {file} gives WER {wer:.4f}, the metrics {recorded:.4f}; not used"
        runs.append(scores)
    return runs, ""


def _from_metrics(group: Group, key: str) -> Estimate:
    """The mean of the members' `key` (None unless all have it) and, for two or more, their sd (ddof 1)."""
    values = [e.metric(key) for e in group.members]
    if any(v is None for v in values):
        return Estimate(None)
    return Estimate(float(np.mean(values)), sd=float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _with_interval(estimate: Estimate, result: dict[str, Any], rate: str) -> Estimate:
    """`estimate` with the interval, p-value and note that `combine`/`compare_runs` computed for `rate`."""
    interval = (result[f"{rate}_ci_low"], result[f"{rate}_ci_high"]) if f"{rate}_ci_low" in result else None
    return dataclasses.replace(estimate, interval=interval, p=result.get(f"{rate}_p"), note=result.get("note"))


def estimate_group(group: Group, source: PredictionSource, samples: int | None = None) -> tuple[Row, list[str]]:
    """Every metric column of a seed group: the mean and sd of its members' metrics, with intervals recomputed from
    their predictions (see the module docstring); notes on what could not be used. A lone experiment whose
    predictions cannot be used keeps the intervals of its metrics where they were drawn by its `eval.bootstrap`."""
    row = {key: _from_metrics(group, key) for key, _ in METRIC_COLUMNS}
    settings = _resampling(group, samples)
    if isinstance(settings, str):
        return row, [settings]
    if settings.samples == 0:
        return row, []
    runs, notes = {}, []
    for model in MODELS:
        for lang in LANGUAGES:
            runs[model, lang], note = _read_runs(group, model, lang, source)
            notes += [note] if note else []
    before, after = MODELS
    systems = {f"{model}.{lang}": [runs[model, lang]] for model, lang in runs}
    systems |= {f"forgetting.{SOURCE}": [runs[before, SOURCE], runs[after, SOURCE]],
                f"learning.{TARGET}": [runs[after, TARGET], runs[before, TARGET]]}
    for prefix, pair in systems.items():
        if any(r is None for r in pair):
            continue
        try:
            result = combine(pair, [1.0] if len(pair) == 1 else [-1.0, 1.0], settings.samples, settings.seed,
                             settings.method, settings.min_speakers, shared_seeds=True)
        except ScoringError as err:
            raise ResultsError(f"{group.name}: {prefix}: {err}; both models must be scored on the same test split") from err
        for rate in RATES:
            row[f"{prefix}.{rate}"] = _with_interval(row[f"{prefix}.{rate}"], result, rate)
    lone = group.members[0] if len(group.members) == 1 else None
    if lone is not None and lookup(lone.metrics, "interval.method") == settings.method:
        for key, estimate in row.items():
            low, high = lone.metric(f"{key}_ci_low"), lone.metric(f"{key}_ci_high")
            if estimate.interval is None and estimate.note is None and low is not None and high is not None:
                row[key] = dataclasses.replace(estimate, interval=(low, high))
    return row, notes


def compare_groups(first: Group, second: Group, source: PredictionSource,
                   samples: int | None = None) -> tuple[Comparison, list[str]]:
    """`first` − `second` after adaptation on each language (bootstrap settings of `second`, the reference)."""
    cells = {key: Estimate(None) for key, _ in COMPARISON_COLUMNS}
    settings = _resampling(second, samples)
    if isinstance(settings, str):
        return Comparison(first, second, cells), [settings]
    notes = []
    for lang in LANGUAGES:
        (ours, note), (theirs, other) = (_read_runs(g, MODELS[1], lang, source) for g in (first, second))
        if ours is None or theirs is None:
            notes.append(f"{first.name} against {second.name}: {note or other}; no {lang} comparison")
            continue
        try:
            result = compare_runs(theirs, ours, settings.samples, settings.seed, settings.method, settings.min_speakers)
        except ScoringError as err:
            raise ResultsError(f"--compare {first.name}={second.name} on {lang}: {err}; a comparison needs the same test "
                               "utterances (the same data seed and splits)") from err
        for rate in RATES:
            cells[f"{lang}.{rate}"] = _with_interval(Estimate(result[rate]), result, rate)
    return Comparison(first, second, cells), notes
