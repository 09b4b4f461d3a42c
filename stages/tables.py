"""The thesis results table: experiments from `dvc exp show --json`, bootstrap intervals, Markdown and LaTeX.

Error rates are fractions in the metrics (0.123) and percentages in the table (`12.3`). Intervals are the
eval stage's 95 % bootstraps (`stages.scoring`), recomputed from the per-utterance predictions where they can
be read (so `--bootstrap` applies); the forgetting interval is paired: both models on the same resampled
utterances. With the same seed and resamples the table's intervals equal those in the metrics.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stages.scoring import SCORE_COLUMNS, ScoringError, UtteranceScore, error_rates, paired_change

LANGS = ("nl", "de")
MODELS = ("pretrained", "adapted")
DASH = "–"


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
class Estimate:
    """A fraction (None when missing) and its 95 % interval where one is known."""

    value: float | None
    interval: tuple[float, float] | None = None


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
       (f"{model}.{lang}.{rate}",)) for lang in LANGS for rate in ("wer", "cer") for model in MODELS),
    ("forgetting", "forgetting nl WER (pp)", ("forgetting.nl.wer",)),
    ("awer", "AWER (%)", ("awer",)),
)

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


def _from_metrics(experiment: Experiment, keys: Sequence[str]) -> Estimate:
    """The first of `keys` the metrics hold, with the interval of its `<key>_ci_low`/`_ci_high` siblings if any."""
    for key in keys:
        value = experiment.metric(key)
        if value is not None:
            low, high = experiment.metric(f"{key}_ci_low"), experiment.metric(f"{key}_ci_high")
            return Estimate(value, None if low is None or high is None else (low, high))
    return Estimate(None)


def estimate_row(experiment: Experiment, source: PredictionSource, samples: int,
                 seed: int) -> tuple[dict[str, Estimate], list[str]]:
    """Every metric column of one experiment; intervals from its predictions (`samples` resamples) where they can
    be read, else from its metrics; notes on predictions that could not be used."""
    row = {column: _from_metrics(experiment, keys) for column, _, keys in METRIC_COLUMNS}
    if samples == 0:
        return row, []
    scores, notes = {}, []
    for model in MODELS:
        for lang in LANGS:
            column, file = f"{model}.{lang}.wer", f"{model}_{lang}.tsv"
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
    before, after = scores.get(("pretrained", "nl")), scores.get(("adapted", "nl"))
    if before and after:
        try:
            change = paired_change(before, after, samples, seed)
        except ScoringError as err:
            raise ValueError(f"{experiment.name}: pretrained_nl.tsv against adapted_nl.tsv: {err}; forgetting needs "
                             "the same test split") from err
        row["forgetting"] = Estimate(row["forgetting"].value, (change["wer_ci_low"], change["wer_ci_high"]))
    return row, notes


def format_percent(fraction: float | None) -> str:
    """`0.123` -> `12.3`; a non-zero value that would print as 0.0 -> `<0.1` / `>-0.1`; None -> an en dash."""
    if fraction is None:
        return DASH
    text = f"{fraction * 100:.1f}"
    if text in ("0.0", "-0.0"):
        return "0.0" if fraction == 0 else ("<0.1" if fraction > 0 else ">-0.1")
    return text


def format_estimate(estimate: Estimate) -> str:
    """`12.3 [10.9, 13.8]`, or `12.3` without an interval."""
    if estimate.interval is None or estimate.value is None:
        return format_percent(estimate.value)
    low, high = estimate.interval
    return f"{format_percent(estimate.value)} [{format_percent(low)}, {format_percent(high)}]"


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


def table_columns(experiments: Sequence[Experiment]) -> list[tuple[str, str, str]]:
    """The params columns for these experiments: the fixed ones, plus each optional one that varies."""
    varying = [c for c in OPTIONAL_PARAM_COLUMNS if len({format_param(e.param(c[0])) for e in experiments}) > 1]
    return list(PARAM_COLUMNS) + varying


def _cells(experiments: Sequence[Experiment], rows: Sequence[dict[str, Estimate]]) -> tuple[list[str], list[list[str]]]:
    params = table_columns(experiments)
    header = ["experiment"] + [md for _, md, _ in params] + [md for _, md, _ in METRIC_COLUMNS]
    body = [[e.name, *(format_param(e.param(key)) for key, _, _ in params),
             *(format_estimate(row[column]) for column, _, _ in METRIC_COLUMNS)]
            for e, row in zip(experiments, rows, strict=True)]
    return header, body


def render_markdown(experiments: Sequence[Experiment], rows: Sequence[dict[str, Estimate]]) -> str:
    """A GitHub Markdown table, one row per experiment (percentages; intervals in brackets)."""
    header, body = _cells(experiments, rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Text-mode LaTeX for a table cell: specials escaped, `<`/`>` as symbols, the en dash as `--`."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
               ">": r"\textgreater{}", DASH: "--"}
    return "".join(special.get(ch, ch) for ch in text)


def render_latex(experiments: Sequence[Experiment], rows: Sequence[dict[str, Estimate]]) -> str:
    """A booktabs `tabular` (`\\usepackage{booktabs}`), one row per experiment; wide: wrap it in `\\resizebox`."""
    params = table_columns(experiments)
    header, body = _cells(experiments, rows)
    latex_header = ["experiment"] + [tex for _, _, tex in params] + [latex_escape(h) for h in header[1 + len(params):]]
    lines = [r"\begin{tabular}{l" + "c" * len(params) + "r" * len(METRIC_COLUMNS) + "}", r"\toprule",
             " & ".join(latex_header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
