"""Thesis tables and figures from all experiments: `python -m stages.report [--exp NAME ...] [--out reports/thesis]`.

Reads `dvc exp show --json` (the baseline commit, its experiments and the workspace), reads each experiment's
per-utterance predictions from git (`git show <rev>:reports/eval/<model>_<lang>.tsv`; from disk for the
workspace) for bootstrap intervals, and writes `results.md`, `results.tex`, `forgetting_vs_german.png` and
`lambda_sweep.png`. Not a pipeline stage: it reads across experiments, which no stage may do.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox

from stages.params import load_params
from stages.tables import (
    OPTIONAL_PARAM_COLUMNS,
    PARAM_COLUMNS,
    Estimate,
    Experiment,
    PredictionSource,
    as_number,
    estimate_row,
    format_param,
    parse_exp_show,
    render_latex,
    render_markdown,
)

LAMBDA = "adapt.ewc_lambda"
# the table's params but λ, in sort order: experiments that share them form one λ sweep
GROUP_KEYS = tuple(key for key, _, _ in (*PARAM_COLUMNS, *OPTIONAL_PARAM_COLUMNS) if key != LAMBDA)
SHORT_NAMES = {key: name for key, name, _ in (*PARAM_COLUMNS, *OPTIONAL_PARAM_COLUMNS)}
DPI = 200
Row = dict[str, Estimate]


def select_experiments(experiments: Sequence[Experiment], names: Sequence[str]) -> tuple[list[Experiment], list[str]]:
    """Those named (by name or rev prefix; all when `names` is empty) in order of their swept params, and notes.

    The workspace is dropped where it repeats another row's params and metrics (as after `dvc repro` + commit)."""
    unknown = [n for n in names if not any(n == e.name or e.rev.startswith(n) for e in experiments)]
    if unknown:
        raise SystemExit(f"report: --exp {' '.join(unknown)}: no such experiment with metrics "
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


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), sorted by x then y."""
    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(a <= x and b <= y and (a, b) != (x, y) for a, b in points)
    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


def _groups(experiments: Sequence[Experiment]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Each experiment's group (its swept params but λ) as a label naming only the params that differ between
    groups, and a (marker, line style) per label, shared by both figures."""
    values = [tuple(format_param(e.param(key)) for key in GROUP_KEYS) for e in experiments]
    varying = [i for i in range(len(GROUP_KEYS)) if len({v[i] for v in values}) > 1]
    labels = [", ".join(f"{SHORT_NAMES[GROUP_KEYS[i]]} {v[i]}" for i in varying) or "all runs" for v in values]
    styles = zip(sorted(set(labels)), itertools.cycle("osD^vP*X"), itertools.cycle(["-", "--", ":", "-."]), strict=False)
    return labels, {label: (marker, line) for label, marker, line in styles}


def _error_bar(center: float, estimate: Estimate) -> list[list[float]] | None:
    """Matplotlib's asymmetric error of a point at `center` (percent) from the estimate's interval (fractions)."""
    if estimate.interval is None:
        return None
    low, high = estimate.interval
    return [[max(center - 100 * low, 0.0)], [max(100 * high - center, 0.0)]]


def _place_labels(ax: Axes, points: Sequence[tuple[float, float]], texts: Sequence[str]) -> None:
    """Annotate each point at the first of a few offsets whose text box overlaps no earlier box or marker."""
    renderer = ax.figure.canvas.get_renderer()
    taken = [ax.transData.transform_bbox(Bbox([p, p])).padded(4) for p in points]  # the markers
    offsets = [(6, 4), (6, -11), (-6, 4), (-6, -11), (6, 14), (-6, 14), (6, -21), (-6, -21), (0, 24)]
    for point, text in zip(points, texts, strict=True):
        for dx, dy in offsets:
            label = ax.annotate(text, point, xytext=(dx, dy), textcoords="offset points", fontsize=7,
                                ha="left" if dx > 0 else "right" if dx < 0 else "center")
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
            label.remove()
        else:  # every offset is crowded: the first one, drawn anyway
            box = ax.annotate(text, point, xytext=offsets[0], textcoords="offset points", fontsize=7).get_window_extent(renderer)
        taken.append(box)


def _figure() -> tuple[Figure, Axes]:
    """A figure on its own Agg canvas: no pyplot, no global backend state."""
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _lambda_label(e: Experiment) -> str:
    method = e.param("adapt.method")
    return f"{'l2 ' if method == 'l2' else ''}λ={format_param(e.param(LAMBDA))}"


def plot_forgetting_vs_german(experiments: Sequence[Experiment], rows: Sequence[Row], path: Path) -> bool:
    """Dutch forgetting (x, pp) against German WER after adaptation (y, %), Pareto front marked; False if no points."""
    kept = [(e, r) for e, r in zip(experiments, rows, strict=True)
            if r["forgetting"].value is not None and r["adapted.de.wer"].value is not None]
    if not kept:
        return False
    groups, styles = _groups([e for e, _ in kept])
    fig, ax = _figure()
    points = [(100 * r["forgetting"].value, 100 * r["adapted.de.wer"].value) for _, r in kept]
    for (x, y), (_, r), group in zip(points, kept, groups, strict=True):
        ax.errorbar(x, y, xerr=_error_bar(x, r["forgetting"]), yerr=_error_bar(y, r["adapted.de.wer"]),
                    fmt=styles[group][0], color="tab:blue", mfc="none", ecolor="0.7", elinewidth=0.8, capsize=2, ms=6)
    front = pareto_front(points)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "-", color="tab:red", lw=1.2, zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    handles = [Line2D([], [], color="tab:red", lw=1.2, label="Pareto front (non-dominated)")]
    if len(styles) > 1:
        handles += [Line2D([], [], ls="", marker=marker, mfc="none", color="tab:blue", label=label)
                    for label, (marker, _) in styles.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.set_xlabel("Dutch forgetting: WER after − before (pp)")
    ax.set_ylabel("German WER after adaptation (%)")
    ax.set_title("Forgetting against learning (lower left is better; bars: 95 % bootstrap;\n"
                 "pp = percentage points)", fontsize=9)
    ax.margins(0.15)
    fig.tight_layout()
    _place_labels(ax, points, [_lambda_label(e) for e, _ in kept])
    fig.savefig(path, dpi=DPI)
    return True


def plot_lambda_sweep(experiments: Sequence[Experiment], rows: Sequence[Row], path: Path) -> bool:
    """Dutch and German WER after adaptation and forgetting against λ (symlog, so λ = 0 shows), one line style
    per group of the other swept params; False if no experiment has a λ and metrics."""
    kept = [(e, r) for e, r in zip(experiments, rows, strict=True) if as_number(e.param(LAMBDA)) is not None]
    if not kept:
        return False
    series = (("adapted.nl.wer", "Dutch WER after (%)", "tab:blue"), ("adapted.de.wer", "German WER after (%)", "tab:orange"),
              ("forgetting", "Dutch forgetting (pp)", "tab:red"))
    groups, styles = _groups([e for e, _ in kept])
    fig, ax = _figure()
    for group, (marker, line) in styles.items():
        members = sorted(((as_number(e.param(LAMBDA)), r) for (e, r), g in zip(kept, groups, strict=True) if g == group),
                         key=lambda member: member[0])
        for key, _, color in series:
            xy = [(lam, 100 * r[key].value) for lam, r in members if r[key].value is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], ls=line, marker=marker, mfc="none", ms=6, color=color, lw=1.2)
    lambdas = sorted({as_number(e.param(LAMBDA)) for e, _ in kept})
    ax.set_xscale("symlog", linthresh=min([lam for lam in lambdas if lam > 0], default=1.0))
    ax.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.axhline(0, color="0.6", lw=0.8, ls=":")
    handles = [Line2D([], [], color=color, lw=3, label=name) for _, name, color in series]
    if len(styles) > 1:
        handles += [Line2D([], [], color="0.3", ls=line, marker=marker, mfc="none", ms=6, label=label)
                    for label, (marker, line) in styles.items()]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.set_xlabel("penalty strength λ (symlog scale)")
    ax.set_ylabel("error rate (%) / forgetting (pp)")
    ax.set_title("λ sweep, after adaptation to German (pp = percentage points)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return True


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


def read_exp_show() -> list[dict]:
    """`dvc exp show --json` of the repository in the current folder."""
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"report: `dvc exp show --json` failed with exit code {done.returncode}: {done.stderr.strip()}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise SystemExit(f"report: `dvc exp show --json` printed no JSON ({err}): {done.stdout[:200]!r}") from err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="+", action="extend", default=[], help="experiment names or rev prefixes (default: all)")
    parser.add_argument("--out", type=Path, default=Path("reports/thesis"))
    parser.add_argument("--bootstrap", type=int, help="resamples for the intervals (default: eval.bootstrap_samples)")
    parser.add_argument("--metrics", default="reports/metrics.json", help="the eval stage's metrics file (dvc.yaml)")
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval"), help="the eval stage's predictions")
    args = parser.parse_args()
    params = load_params()
    samples = params.eval.bootstrap_samples if args.bootstrap is None else args.bootstrap

    found, notes = parse_exp_show(read_exp_show(), args.metrics)
    experiments, more = select_experiments(found, args.exp)
    notes += more
    for note in notes:
        print(f"report: {note}")
    if not experiments:
        raise SystemExit(f"report: no experiments with metrics in {args.metrics}; run `dvc repro` or `dvc exp run` first")
    rows = []
    for experiment in experiments:
        row, row_notes = estimate_row(experiment, git_predictions(args.predictions), samples, params.seed)
        rows.append(row)
        for note in row_notes:
            print(f"report: {note}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(render_markdown(experiments, rows), encoding="utf-8")
    (args.out / "results.tex").write_text(render_latex(experiments, rows), encoding="utf-8")
    written = ["results.md", "results.tex"]
    for name, plot in (("forgetting_vs_german.png", plot_forgetting_vs_german), ("lambda_sweep.png", plot_lambda_sweep)):
        if plot(experiments, rows, args.out / name):
            written.append(name)
        else:
            print(f"report: {name} not drawn: no experiment has the metrics it plots")
    print(f"report: {len(experiments)} experiments, {samples} bootstrap resamples -> {args.out}/{{{','.join(written)}}}")


if __name__ == "__main__":
    main()
