"""The thesis table in Markdown and LaTeX (booktabs): percentages with one decimal, intervals in brackets."""

from __future__ import annotations

from collections.abc import Sequence

from forgetting.results import DASH, METRIC_COLUMNS, OPTIONAL_PARAM_COLUMNS, PARAM_COLUMNS, Experiment, format_param
from forgetting.scoring import Estimate


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
