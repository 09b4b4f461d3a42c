"""Results across experiments: what `dvc exp show --json` holds, which experiments a table shows and in what
order, and each one's estimates with bootstrap intervals. Rendering is in `forgetting.render`, figures in
`forgetting.figures`.

Error rates are fractions (0.123). Intervals are the eval stage's 95 % bootstraps (`forgetting.scoring`),
recomputed from the per-utterance predictions where they can be read, with the experiment's own `seed` and
`eval.bootstrap_samples` unless the report names other resamples; the forgetting interval is paired: both models
on the same resampled utterances. So by default the table's intervals equal those in each experiment's metrics.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetting.errors import InputError
from forgetting.figures import SweepPoint
from forgetting.layout import LANGUAGES, MODELS, SOURCE, predictions_name
from forgetting.scoring import Estimate, ScoringError, error_rates, paired_change, read_predictions

DASH = "–"  # a missing value in a table or label


class ResultsError(InputError):
    """A request for experiments that do not exist; the message names them and those that do."""


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


# (dotted params key, Markdown header, LaTeX header); λ's scale depends on the Fisher normalisation: keep both
PARAM_COLUMNS = (
    ("adapt.ewc_lambda", "λ", r"$\lambda$"), ("adapt.method", "method", "method"), ("adapt.lr", "lr", "lr"),
    ("adapt.batch_size", "batch", "batch"), ("adapt.effective_batch_size", "eff. batch", "eff. batch"),
    ("fisher.samples", "Fisher N", "Fisher $N$"), ("fisher.kind", "Fisher kind", "Fisher kind"),
    ("fisher.normalize", "Fisher norm.", "Fisher norm."),
)
OPTIONAL_PARAM_COLUMNS = (  # shown only when they vary
    ("adapt.max_steps", "steps", "steps"), ("adapt.freeze_feature_encoder", "frozen CNN", "frozen CNN"),
    ("pretrain.lr", "pretrain lr", "pretrain lr"),
)
# (column, Markdown header, metrics keys in order of preference), from the eval stage's reports/metrics.json.
METRIC_COLUMNS = (
    *((f"{model}.{lang}.{rate}", f"{lang} {rate.upper()} {'before' if model == 'pretrained' else 'after'} (%)",
       (f"{model}.{lang}.{rate}",)) for lang in LANGUAGES for rate in ("wer", "cer") for model in MODELS),
    ("forgetting", f"forgetting {SOURCE} WER (pp)", (f"forgetting.{SOURCE}.wer",)),
    ("awer", "AWER (%)", ("awer",)),
)

LAMBDA = "adapt.ewc_lambda"
# the table's params but λ, in sort order: experiments that share them form one λ sweep
GROUP_KEYS = tuple(key for key, _, _ in (*PARAM_COLUMNS, *OPTIONAL_PARAM_COLUMNS) if key != LAMBDA)
SHORT_NAMES = {key: name for key, name, _ in (*PARAM_COLUMNS, *OPTIONAL_PARAM_COLUMNS)}
Row = dict[str, Estimate]

PredictionSource = Callable[[Experiment, str], str | None]
"""(experiment, file name such as "adapted_nl.tsv") -> the file's text, or None where it cannot be read."""


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


def _from_metrics(experiment: Experiment, keys: Sequence[str]) -> Estimate:
    """The first of `keys` the metrics hold, with the interval of its `<key>_ci_low`/`_ci_high` siblings if any."""
    for key in keys:
        value = experiment.metric(key)
        if value is not None:
            low, high = experiment.metric(f"{key}_ci_low"), experiment.metric(f"{key}_ci_high")
            return Estimate(value, None if low is None or high is None else (low, high))
    return Estimate(None)


def estimate_row(experiment: Experiment, source: PredictionSource, samples: int | None = None) -> tuple[Row, list[str]]:
    """Every metric column of one experiment; intervals from its predictions where they can be read, else from
    its metrics; notes on predictions that could not be used. Resampling uses the experiment's own `seed` and, when
    `samples` is None, its own `eval.bootstrap_samples`, so the intervals are the ones its eval stage computed."""
    row = {column: _from_metrics(experiment, keys) for column, _, keys in METRIC_COLUMNS}
    seed = experiment.param("seed")
    if samples is None:
        samples = experiment.param("eval.bootstrap_samples")
    if not isinstance(seed, int) or not isinstance(samples, int):
        return row, [f"{experiment.name}: no seed or eval.bootstrap_samples in its params; intervals from its metrics"]
    if samples == 0:
        return row, []
    scores, notes = {}, []
    for model in MODELS:
        for lang in LANGUAGES:
            column, file = f"{model}.{lang}.wer", predictions_name(model, lang)
            text = source(experiment, file)
            if text is None:
                continue
            read = read_predictions(text, f"{experiment.name}:{file}")
            rates, value = error_rates(read, samples, seed), row[column].value
            if value is not None and abs(rates["wer"] - value) > 1e-6:  # stale or foreign predictions
                notes.append(f"{experiment.name}: {file} gives WER {rates['wer']:.4f}, the metrics {value:.4f}; not used")
                continue
            scores[model, lang] = read
            row[column] = Estimate(value, (rates["wer_ci_low"], rates["wer_ci_high"]))
    if not scores:
        notes.append(f"{experiment.name}: no per-utterance predictions readable; intervals from its metrics, if any")
    before, after = scores.get((MODELS[0], SOURCE)), scores.get((MODELS[1], SOURCE))
    if before and after:
        try:
            change = paired_change(before, after, samples, seed)
        except ScoringError as err:
            raise ValueError(f"{experiment.name}: {predictions_name(MODELS[0], SOURCE)} against "
                             f"{predictions_name(MODELS[1], SOURCE)}: {err}; forgetting needs the same test split") from err
        row["forgetting"] = Estimate(row["forgetting"].value, (change["wer_ci_low"], change["wer_ci_high"]))
    return row, notes


def as_number(value: Any) -> float | None:
    """A params value as a number ("1e-05" arrives as a string from `dvc exp run -S`), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def select_experiments(experiments: Sequence[Experiment], names: Sequence[str]) -> tuple[list[Experiment], list[str]]:
    """Those named (by name or rev prefix; all when `names` is empty) in order of their swept params, and notes.

    The workspace is dropped where it repeats another row's params and metrics (as after `dvc repro` + commit)."""
    unknown = [n for n in names if not any(n == e.name or e.rev.startswith(n) for e in experiments)]
    if unknown:
        raise ResultsError(f"--exp {' '.join(unknown)}: no such experiment with metrics "
                         f"(have: {', '.join(e.name for e in experiments)})")
    chosen = [e for e in experiments if not names or any(n == e.name or e.rev.startswith(n) for n in names)]
    notes = []
    for e in [e for e in chosen if e.rev == "workspace"]:
        twin = next((o for o in chosen if o is not e and (o.params, o.metrics) == (e.params, e.metrics)), None)
        if twin is not None:
            chosen.remove(e)
            notes.append(f"workspace: same params and metrics as {twin.name}; one row for both")

    def order(e: Experiment) -> tuple[tuple[int, float, str], ...]:
        values = [(as_number(e.param(key)), e.param(key)) for key in (*GROUP_KEYS, LAMBDA)]
        return (*((0, n, "") if n is not None else (1, 0.0, str(v)) for n, v in values), (2, 0.0, e.name))
    return sorted(chosen, key=order), notes


def sweep_points(experiments: Sequence[Experiment], rows: Sequence[Row]) -> list[SweepPoint]:
    """The report figures' view of each experiment: a label with its method and λ, its group (the swept params but
    λ that differ between the experiments, or "all runs"), its λ as a number, and its row of estimates."""
    values = [tuple(format_param(e.param(key)) for key in GROUP_KEYS) for e in experiments]
    varying = [i for i in range(len(GROUP_KEYS)) if len({v[i] for v in values}) > 1]
    groups = [", ".join(f"{SHORT_NAMES[GROUP_KEYS[i]]} {v[i]}" for i in varying) or "all runs" for v in values]
    return [SweepPoint(f"{'l2 ' if e.param('adapt.method') == 'l2' else ''}λ={format_param(e.param(LAMBDA))}", group,
                       as_number(e.param(LAMBDA)), row)
            for e, row, group in zip(experiments, rows, groups, strict=True)]


def format_param(value: Any) -> str:
    """A params value for a table cell or legend: numbers in `%g` (`1e-05`, `0.4`), missing as an en dash."""
    if value is None:
        return DASH
    number = as_number(value)
    return f"{number:g}" if number is not None and not isinstance(value, int) else str(value)


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
