"""Results across experiments: what `dvc exp show --json` holds, which experiments a table shows and in what order,
seed groups, each group's estimates with bootstrap intervals, and paired comparisons between groups. Rendering is in
`forgetting.render`, figures in `forgetting.figures`, the statistics in `forgetting.scoring`.

Error rates are fractions (0.123). A seed group is the experiments that differ only in a training seed
(`TRAINING_SEEDS`); a lone experiment is a group of one. A group's value is the mean of its members' metrics, with
their standard deviation (ddof 1) and the two-level bootstrap interval over seeds and speakers of
`forgetting.scoring`. Intervals are recomputed from the per-utterance predictions with the group's own `seed`,
`eval.bootstrap`, `eval.min_speakers` and, unless the report names other resamples, `eval.bootstrap_samples`: so a
lone experiment's intervals equal those in its metrics.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forgetting.errors import InputError
from forgetting.layout import LANGUAGES, MODELS, SOURCE, TARGET, predictions_name
from forgetting.scoring import RATES, Estimate, ScoringError, UtteranceScore, combine, compare_runs, error_rates, read_predictions

DASH = "–"  # a missing value in a table or label
TRAINING_SEEDS = ("pretrain.seed", "adapt.seed")  # the data seed `seed` is not one: it changes the test set


class ResultsError(InputError):
    """A request for experiments or comparisons that cannot be made; the message names them and those that exist."""


@dataclass(frozen=True)
class Experiment:
    """One row of `dvc exp show`: `rev` is a commit sha or "workspace"; params and metrics as nested dicts."""

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, Any]

    def param(self, dotted: str) -> Any:
        return _lookup(self.params, dotted)

    def metric(self, dotted: str) -> float | None:
        value = _lookup(self.metrics, dotted)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Group:
    """Experiments that differ only in their training seeds (in the order `select_experiments` gives: by seed); named
    after the first."""

    members: tuple[Experiment, ...]

    @property
    def name(self) -> str:
        return self.members[0].name

    def param(self, dotted: str) -> Any:
        return self.members[0].param(dotted)


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

PredictionSource = Callable[[Experiment, str], str | None]
"""(experiment, file name such as "adapted_nl.tsv") -> the file's text, or None where it cannot be read."""


@dataclass(frozen=True)
class Comparison:
    """`first` minus `second` after adaptation, by COMPARISON_COLUMNS key (`nl.wer`): the difference of their error
    rates (seed means) on the same test utterances, its paired interval and the Wilcoxon p."""

    first: Group
    second: Group
    cells: dict[str, Estimate]


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_exp_show(records: list[dict[str, Any]], metrics_file: str) -> tuple[list[Experiment], list[str]]:
    """Experiments of `dvc exp show --json` whose `metrics_file` was read, and a note per one skipped.

    Layout (DVC 3): a list of baselines (the first is "workspace"), each with `data.params["params.yaml"].data`,
    `data.metrics[metrics_file].data` (or `.error`), and `experiments[].revs[]` of the same shape. A failed or
    queued experiment is skipped: a failed one still shows the metrics left in its tree by an earlier run.
    """
    found, notes = [], []
    pending = [(record, None) for record in records]
    while pending:
        record, executor = pending.pop(0)
        for group in record.get("experiments") or []:
            pending += [(rev, group.get("executor")) for rev in group.get("revs") or []]
        rev = str(record.get("rev"))
        name = record.get("name") or (rev if rev == "workspace" else rev[:7])
        data = record.get("data") or {}
        state = (executor or {}).get("state")
        metrics = (data.get("metrics") or {}).get(metrics_file) or {}
        if record.get("error") or state == "failed":
            notes.append(f"{name}: skipped, the experiment failed ({(record.get('error') or {}).get('msg', state)})")
        elif state in ("queued", "running"):
            notes.append(f"{name}: skipped, {state}")
        elif "data" not in metrics:
            reason = (metrics.get("error") or {}).get("msg", "no such file")
            notes.append(f"{name}: skipped, {metrics_file} unreadable: {reason}")
        else:
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            found.append(Experiment(name=name, rev=rev, params=params, metrics=metrics["data"]))
    return found, notes


def as_number(value: Any) -> float | None:
    """A params value as a number ("1e-05" arrives as a string from `dvc exp run -S`), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def format_param(value: Any) -> str:
    """A params value for a table cell or legend: numbers in `%g` (`1e-05`, `0.4`), missing as an en dash."""
    if value is None:
        return DASH
    number = as_number(value)
    return f"{number:g}" if number is not None and not isinstance(value, int) else str(value)


def _matches(experiment: Experiment, name: str) -> bool:
    return name in (experiment.name, experiment.rev) or (len(name) >= 4 and experiment.rev.startswith(name))


def select_experiments(experiments: Sequence[Experiment], names: Sequence[str],
                       order_keys: Sequence[str]) -> tuple[list[Experiment], list[str]]:
    """Those named (by name or rev prefix; all when `names` is empty) sorted by the params `order_keys` (numbers
    before text, then by name), and notes.

    The workspace is dropped where it repeats another row's params and metrics (as after `dvc repro` + commit)."""
    unknown = [n for n in names if not any(_matches(e, n) for e in experiments)]
    if unknown:
        raise ResultsError(f"--exp {' '.join(unknown)}: no such experiment with metrics "
                           f"(have: {', '.join(e.name for e in experiments)})")
    chosen = [e for e in experiments if not names or any(_matches(e, n) for n in names)]
    notes = []
    for e in [e for e in chosen if e.rev == "workspace"]:
        twin = next((o for o in chosen if o is not e and (o.params, o.metrics) == (e.params, e.metrics)), None)
        if twin is not None:
            chosen.remove(e)
            notes.append(f"workspace: same params and metrics as {twin.name}; one row for both")

    def order(e: Experiment) -> tuple[tuple[int, float, str], ...]:
        values = [(as_number(e.param(key)), e.param(key)) for key in (*order_keys, *TRAINING_SEEDS)]
        return (*((0, n, "") if n is not None else (1, 0.0, str(v)) for n, v in values), (2, 0.0, e.name))
    return sorted(chosen, key=order), notes


def group_by_seed(experiments: Sequence[Experiment]) -> tuple[list[Group], list[str]]:
    """Seed groups in order of their first member: experiments whose params are equal but for TRAINING_SEEDS; notes
    on members that share their seeds as well (their spread is then not seed variation)."""
    groups: dict[str, list[Experiment]] = {}
    for e in experiments:
        params = json.loads(json.dumps(e.params))
        for dotted in TRAINING_SEEDS:
            *parents, leaf = dotted.split(".")
            node = _lookup(params, ".".join(parents)) if parents else params
            if isinstance(node, dict):
                node.pop(leaf, None)
        groups.setdefault(json.dumps(params, sort_keys=True), []).append(e)
    notes = []
    for members in groups.values():
        seeds = [tuple(e.param(key) for key in TRAINING_SEEDS) for e in members]
        twins = [e.name for e, s in zip(members, seeds, strict=True) if seeds.count(s) > 1]
        if twins:
            notes.append(f"{', '.join(twins)}: same params and the same training seeds; grouped, but their spread "
                         "is not seed variation")
    return [Group(tuple(members)) for members in groups.values()], notes


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
    if lone is not None and _lookup(lone.metrics, "interval.method") == settings.method:
        for key, estimate in row.items():
            low, high = lone.metric(f"{key}_ci_low"), lone.metric(f"{key}_ci_high")
            if estimate.interval is None and estimate.note is None and low is not None and high is not None:
                row[key] = dataclasses.replace(estimate, interval=(low, high))
    return row, notes


def find_group(groups: Sequence[Group], name: str, flag: str) -> Group:
    """The group with a member named `name` (or whose rev starts with it); `flag` names the option in the error."""
    found = [g for g in groups if any(_matches(e, name) for e in g.members)]
    if len(found) != 1:
        have = ", ".join(e.name for g in groups for e in g.members)
        raise ResultsError(f"{flag} {name}: {'no' if not found else 'more than one'} experiment of the report "
                           f"matches (have: {have})")
    return found[0]


def comparison_pairs(groups: Sequence[Group], compare: Sequence[str], baseline: str | None) -> list[tuple[Group, Group]]:
    """(first, second) pairs to compare as first − second: each `A=B` of `compare`, then every other group against
    `baseline`; a pair of one group with itself is refused."""
    pairs = []
    for spec in compare:
        first, sep, second = spec.partition("=")
        if not sep or not first or not second:
            raise ResultsError(f"--compare {spec}: expected A=B (A minus B), two experiment names")
        pairs.append((find_group(groups, first, "--compare"), find_group(groups, second, "--compare")))
    if baseline is not None:
        reference = find_group(groups, baseline, "--baseline")
        pairs += [(g, reference) for g in groups if g is not reference]
    for first, second in pairs:
        if first is second:
            raise ResultsError(f"--compare {first.name}={second.name}: the same seed group on both sides")
    return list({(first.name, second.name): (first, second) for first, second in pairs}.values())  # each pair once


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


def git_predictions(folder: Path) -> PredictionSource:
    """Predictions files of an experiment: `git show <rev>:<folder>/<file>`, or the file on disk for the workspace."""
    def read(experiment: Experiment, file: str) -> str | None:
        path = folder / file
        if experiment.rev == "workspace":
            return path.read_text(encoding="utf-8") if path.is_file() else None
        shown = subprocess.run(["git", "show", f"{experiment.rev}:./{path.as_posix()}"], capture_output=True,
                               text=True, encoding="utf-8", check=False)
        return shown.stdout if shown.returncode == 0 else None
    return read
