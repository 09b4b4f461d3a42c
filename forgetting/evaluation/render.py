"""The thesis tables in Markdown and LaTeX (booktabs): one row per seed group with the params that define it and its
error rates, then the paired comparisons with significance marks, each followed by notes that say how the numbers
were computed. Percentages with one decimal, intervals in brackets; also the report figures' view of each group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forgetting.evaluation.estimates import COMPARISON_COLUMNS, METRIC_COLUMNS, Comparison, Row
from forgetting.evaluation.experiments import DASH, TRAINING_SEEDS, Group, as_number, format_param
from forgetting.evaluation.figures import SweepPoint
from forgetting.evaluation.scoring import Estimate

LAMBDA = "adapt.ewc_lambda"
PENALTY_METHODS = ("ewc", "mas", "l2")  # the methods that λ weighs
MARKS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))  # p below the bound -> mark


@dataclass(frozen=True)
class ParamColumn:
    """A params column: its dotted key, Markdown and LaTeX headers, the `adapt.method`s whose knob it is (a dash for
    the others; () = every method), and whether it is shown when every row has the same value."""

    key: str
    markdown: str
    latex: str
    methods: tuple[str, ...] = ()
    always: bool = True

    def applies(self, method: Any) -> bool:
        return not self.methods or method in self.methods


# λ sits beside the importance normalisation, which sets its scale
PARAM_COLUMNS = (
    ParamColumn("adapt.method", "method", "method"),
    ParamColumn(LAMBDA, "λ", r"$\lambda$", PENALTY_METHODS),
    ParamColumn("importance.normalize", "importance norm.", "importance norm.", ("ewc", "mas")),
    ParamColumn("importance.fisher", "Fisher", "Fisher", ("ewc",)),
    ParamColumn("importance.samples", "importance N", "importance $N$", ("ewc", "mas")),
    ParamColumn("importance.loss", "Fisher loss", "Fisher loss", ("ewc",), always=False),
    ParamColumn("importance.draws", "Fisher draws", "Fisher draws", ("ewc",), always=False),
    ParamColumn("adapt.kd_weight", "KD weight", "KD weight", ("lwf",)),
    ParamColumn("adapt.kd_temperature", "KD T", "KD $T$", ("lwf",)),
    ParamColumn("adapt.lora.rank", "LoRA rank", "LoRA rank", ("lora",)),
    ParamColumn("adapt.lora.alpha", "LoRA α", r"LoRA $\alpha$", ("lora",)),
    ParamColumn("adapt.replay_fraction", "replay", "replay", always=False),
    ParamColumn("adapt.replay_samples", "replay N", "replay $N$", always=False),
    ParamColumn("average.alpha", "avg. α", r"avg.\ $\alpha$", always=False),
    ParamColumn("adapt.lr", "lr", "lr"),
    ParamColumn("adapt.batch_size", "batch", "batch"),
    ParamColumn("adapt.effective_batch_size", "eff. batch", "eff. batch"),
    ParamColumn("adapt.keep", "keep", "keep", always=False),
    ParamColumn("adapt.max_steps", "steps", "steps", always=False),
    ParamColumn("adapt.freeze_feature_encoder", "frozen CNN", "frozen CNN", always=False),
    ParamColumn("pretrain.lr", "pretrain lr", "pretrain lr", always=False),
)
ORDER_KEYS = tuple(c.key for c in PARAM_COLUMNS)  # rows sort by the params in column order


def format_percent(fraction: float | None) -> str:
    """`0.123` -> `12.3`; a non-zero value that would print as 0.0 -> `<0.1` / `>-0.1`; None -> an en dash."""
    if fraction is None:
        return DASH
    text = f"{fraction * 100:.1f}"
    if text in ("0.0", "-0.0"):
        return "0.0" if fraction == 0 else ("<0.1" if fraction > 0 else ">-0.1")
    return text


def significance(p: float) -> str:
    """`***` for p < 0.001, `**` for p < 0.01, `*` for p < 0.05, else nothing."""
    return next((mark for bound, mark in MARKS if p < bound), "")


def format_estimate(estimate: Estimate) -> str:
    """`12.3 [10.9, 13.8]`; a seed group `12.3 ± 0.8 [10.1, 14.5]`; a difference `-5.1** [-7.0, -3.2], p = 0.004`;
    `12.3 †` where the interval was withheld (the note says why); `12.3` without an interval."""
    text = format_percent(estimate.value)
    if estimate.value is None:
        return text
    if estimate.sd is not None:
        text += f" ± {format_percent(estimate.sd)}"
    if estimate.p is not None:
        text += significance(estimate.p)
    if estimate.interval is not None:
        text += f" [{format_percent(estimate.interval[0])}, {format_percent(estimate.interval[1])}]"
    elif estimate.note is not None:
        text += " †"
    if estimate.p is not None:
        text += ", p < 0.001" if estimate.p < 0.001 else f", p = {estimate.p:.3f}"
    return text


def table_columns(groups: Sequence[Group]) -> list[ParamColumn]:
    """The params columns for these groups: each that applies to one of their methods, if it is always shown or
    varies between the groups it applies to."""
    shown = []
    for column in PARAM_COLUMNS:
        values = {format_param(g.param(column.key)) for g in groups if column.applies(g.param("adapt.method"))}
        if values and (column.always or len(values) > 1):
            shown.append(column)
    return shown


def method_label(group: Group) -> str:
    """The method and its own knobs: `ewc λ=0.25`, `lwf w=1 T=2`, `lora r=8 α=16`, with replay and averaging when on."""
    method = group.param("adapt.method")
    knobs = {"lwf": [("w", "adapt.kd_weight"), ("T", "adapt.kd_temperature")],
             "lora": [("r", "adapt.lora.rank"), ("α", "adapt.lora.alpha")]}.get(method, [("λ", LAMBDA)])
    label = " ".join([str(method), *(f"{short}={format_param(group.param(key))}" for short, key in knobs)])
    if (as_number(group.param("adapt.replay_fraction")) or 0) > 0:
        label += f" replay={format_param(group.param('adapt.replay_fraction'))}"
    if as_number(group.param("average.alpha")) not in (None, 1.0):
        label += f" avg α={format_param(group.param('average.alpha'))}"
    return label


def sweep_points(groups: Sequence[Group], rows: Sequence[Row]) -> list[SweepPoint]:
    """The report figures' view of each group: its method label (with its name where labels repeat), its line (the
    params of the columns but λ that apply to its method and take two or more values among the groups, or "all
    runs"), its λ as a number (None for methods without one), and its row."""
    columns = [c for c in PARAM_COLUMNS if c.key != LAMBDA]
    values = [tuple(format_param(g.param(c.key)) if c.applies(g.param("adapt.method")) else DASH for c in columns)
              for g in groups]
    varying = [i for i in range(len(columns)) if len({v[i] for v in values} - {DASH}) > 1]
    lines = [", ".join(f"{columns[i].markdown} {v[i]}" for i in varying if v[i] != DASH) or "all runs" for v in values]
    labels = [method_label(g) for g in groups]
    labels = [f"{label} ({g.name})" if labels.count(label) > 1 else label for label, g in zip(labels, groups, strict=True)]
    return [SweepPoint(label, line, as_number(g.param(LAMBDA)) if g.param("adapt.method") in PENALTY_METHODS else None, row)
            for g, row, line, label in zip(groups, rows, lines, labels, strict=True)]


def _resampling_text(groups: Sequence[Group], samples: int | None) -> str:
    """How the groups' intervals were drawn, in words; per group where they differ."""
    what = {"speaker": "over speakers (each resample keeps every utterance of the speakers it draws)",
            "utterance": "over utterances"}
    settings: dict[str, list[str]] = {}
    for g in groups:
        n = samples if samples is not None else g.param("eval.bootstrap_samples")
        method = g.param("eval.bootstrap")
        text = f"{what[method]}, {n} resamples" if method in what else "none (no eval.bootstrap in its params)"
        settings.setdefault(text, []).append(g.name)
    if len(settings) == 1:
        return next(iter(settings))
    return "; ".join(f"{text} for {', '.join(names)}" for text, names in settings.items())


def _table_notes(groups: Sequence[Group], rows: Sequence[Row], samples: int | None) -> list[str]:
    notes = ["Error rates in %, differences in percentage points (pp), on each language's test set; forgetting = "
             "after - before, learning = before - after. Brackets: 95 % bootstrap intervals "
             f"{_resampling_text(groups, samples)}, drawn with each experiment's data seed; forgetting and learning "
             "paired (both models on the same resamples). A row of several seeds: mean ± sd (ddof 1) over its runs, "
             "and an interval from a two-level bootstrap that resamples seeds and speakers together "
             "(forgetting/evaluation/scoring.py)."]
    withheld = sorted({e.note for row in rows for e in row.values() if e.note is not None and e.interval is None})
    if withheld:
        notes.append(f"† {'; '.join(withheld)}.")
    seeded = [g for g in groups if len(g.members) > 1]
    if seeded:
        listing = "; ".join(f"{g.name}: " + ", ".join(
            f"{e.name} ({', '.join(format_param(e.param(key)) for key in TRAINING_SEEDS)})" for e in g.members)
            for g in seeded)
        notes.append(f"Seed groups ({', '.join(TRAINING_SEEDS)}): {listing}.")
    return notes


COMPARISON_NOTE = ("A - B after adaptation, in percentage points, on the same test utterances (negative: A makes fewer "
                   "errors); for seed groups, the difference of their means. Brackets: 95 % paired bootstrap interval "
                   "(the same speakers for both, seeds drawn per group; B's bootstrap settings). * p < 0.05, "
                   "** p < 0.01, *** p < 0.001: two-sided Wilcoxon signed-rank test on per-speaker error rates "
                   "(averaged over a group's seeds; zero differences dropped; scipy). The test takes the seed means "
                   "as given, so it reflects speaker variation only; the interval covers seed variation too.")


def _cells(groups: Sequence[Group], rows: Sequence[Row]) -> tuple[list[ParamColumn], list[list[str]]]:
    params = table_columns(groups)
    body = [[g.name, str(len(g.members)),
             *(format_param(g.param(c.key)) if c.applies(g.param("adapt.method")) else DASH for c in params),
             *(format_estimate(row[key]) for key, _ in METRIC_COLUMNS)]
            for g, row in zip(groups, rows, strict=True)]
    return params, body


def _comparison_cells(comparisons: Sequence[Comparison]) -> list[list[str]]:
    return [[f"{c.first.name} - {c.second.name}", *(format_estimate(c.cells[key]) for key, _ in COMPARISON_COLUMNS)]
            for c in comparisons]


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]], left: int) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < left else "--:" for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(cell.replace("|", r"\|") for cell in row) + " |" for row in body]


def render_markdown(groups: Sequence[Group], rows: Sequence[Row], comparisons: Sequence[Comparison] = (),
                    samples: int | None = None, machines: Sequence[str] = ()) -> str:
    """A GitHub Markdown document: the table of seed groups, its notes, and the comparisons with theirs.
    `samples`: the resamples the report used, when it overrode the groups' own; `machines`: notes on the machines the
    experiments ran on (`machine_notes`)."""
    params, body = _cells(groups, rows)
    header = ["experiment", "seeds", *(c.markdown for c in params), *(md for _, md in METRIC_COLUMNS)]
    lines = [*_markdown_table(header, body, 1), "",
             *(f"{note}\n" for note in [*_table_notes(groups, rows, samples), *machines])]
    if comparisons:
        header = ["comparison (A - B)", *(md for _, md in COMPARISON_COLUMNS)]
        lines += [*_markdown_table(header, _comparison_cells(comparisons), 1), "", COMPARISON_NOTE, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def latex_escape(text: str) -> str:
    """Text-mode LaTeX for a table cell or note: specials escaped, `<`/`>` as symbols, the en dash as `--`, `±`, `†`,
    `λ` and `α` as their commands."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
               ">": r"\textgreater{}", DASH: "--", "±": r"$\pm$", "†": r"\textdagger{}", "λ": r"$\lambda$",
               "α": r"$\alpha$"}
    return "".join(special.get(ch, ch) for ch in text)


def _latex_table(header: Sequence[str], body: Sequence[Sequence[str]], spec: str) -> list[str]:
    return [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule",
            *(" & ".join(latex_escape(cell) for cell in row) + r" \\" for row in body), r"\bottomrule", r"\end{tabular}"]


def render_latex(groups: Sequence[Group], rows: Sequence[Row], comparisons: Sequence[Comparison] = (),
                 samples: int | None = None, machines: Sequence[str] = ()) -> str:
    """Booktabs `tabular`s (`\\usepackage{booktabs}`) with the Markdown's content, notes in `\\footnotesize`; the
    first table is wide: wrap it in `\\resizebox`."""
    params, body = _cells(groups, rows)
    header = ["experiment", "seeds", *(c.latex for c in params), *(latex_escape(md) for _, md in METRIC_COLUMNS)]
    lines = _latex_table(header, body, "lr" + "c" * len(params) + "r" * len(METRIC_COLUMNS))
    lines += [r"\par\smallskip", *(r"{\footnotesize " + latex_escape(note) + r"\par}" for note in
                                   [*_table_notes(groups, rows, samples), *machines])]
    if comparisons:
        header = ["comparison (A -- B)", *(latex_escape(md) for _, md in COMPARISON_COLUMNS)]
        lines += [r"\bigskip", *_latex_table(header, _comparison_cells(comparisons), "l" + "r" * len(COMPARISON_COLUMNS)),
                  r"\par\smallskip", r"{\footnotesize " + latex_escape(COMPARISON_NOTE) + r"\par}"]
    return "\n".join(lines) + "\n"
