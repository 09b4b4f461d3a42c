"""Every figure for print (matplotlib, Agg canvas, no pyplot state): where the importance mass sits by layer, the
adapt learning curves with the regulariser and the forgetting curve, the test error rates, and the report's figures
across experiments (forgetting against learning with the Pareto front, the λ sweep)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator
from matplotlib.transforms import Bbox

from forgetting.curves import TRAIN_CTC_LOSS, TRAIN_KD_LOSS, TRAIN_LOSS, TRAIN_PENALTY, dev_curve, read_curve
from forgetting.evaluation.scoring import Estimate
from forgetting.io import atomic_path

DPI = 200


@dataclass(frozen=True)
class SweepPoint:
    """One experiment or seed group in the report's figures: `label` (its method and that method's knobs) beside its
    marker, `group` (points of one group share a marker and line), `lam` (None for a method without λ), and `rates`,
    its estimates by metrics key (`forgetting.nl.wer`, `adapted.de.wer`)."""

    label: str
    group: str
    lam: float | None
    rates: Mapping[str, Estimate]


def plot_importance_by_layer(layers: Mapping[str, Mapping[str, float]], title: str, path: Path) -> None:
    """Bars of each layer's share of the importance mass (sum) and of the parameters, bottom layer first."""
    names = list(layers)
    entries = sum(s["entries"] for s in layers.values())
    figure = Figure(figsize=(7.0, 0.28 * len(names) + 1.6), layout="constrained")
    ax = figure.add_subplot()
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [100 * layers[n]["share"] for n in names], height=0.4, label="importance mass")
    ax.barh([i + 0.2 for i in y], [100 * layers[n]["entries"] / entries for n in names], height=0.4,
            label="parameters", alpha=0.6)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of the total (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    _save(figure, path)


def plot_adapt_curves(live_dir: Path, target: str, source: str, path: Path) -> None:
    """The adapt stage's curves: training CTC loss and the regulariser per step (left); dev WER and CER per evaluation
    on the target language and, on the same step axis, on the source language: the forgetting curve (right)."""
    figure = Figure(figsize=(9.0, 3.4), layout="constrained")
    loss_ax, dev_ax = figure.subplots(1, 2)
    for curve, label in ((TRAIN_CTC_LOSS, "CTC loss (train)"), (TRAIN_PENALTY, "penalty (λ/2)·ΣΩ(θ−θ*)²"),
                         (TRAIN_KD_LOSS, "distillation (train)"), (TRAIN_LOSS, "total (train)")):
        steps, values = read_curve(live_dir, curve)
        if steps:
            loss_ax.plot(steps, values, label=label)
    loss_ax.plot(*read_curve(live_dir, dev_curve(target, "loss")), "o--", label=f"CTC loss ({target} dev)")
    loss_ax.set_xlabel("optimiser step")
    loss_ax.set_ylabel("loss (nats per label)")
    loss_ax.set_yscale("symlog", linthresh=0.01)
    loss_ax.legend(fontsize=8)
    for lang, style in ((target, "-"), (source, "--")):
        for rate, marker in (("wer", "o"), ("cer", "s")):
            steps, values = read_curve(live_dir, dev_curve(lang, rate))
            dev_ax.plot(steps, [100 * v for v in values], marker + style, markersize=3, label=f"{lang} dev {rate.upper()}")
    dev_ax.set_xlabel("optimiser step")
    dev_ax.set_ylabel("error rate (%)")
    dev_ax.set_title(f"learning {target} (solid), forgetting {source} (dashed)", fontsize=9)
    dev_ax.legend(fontsize=8)
    figure.suptitle("Adaptation to the target language")
    _save(figure, path)


def plot_error_rates(rates: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> None:
    """Grouped bars of WER and CER for each (model, language) in `rates[model][language]`, with the WER
    interval as an error bar where `wer_ci_low`/`wer_ci_high` are present; saved as PNG (Agg canvas)."""
    groups = [(model, lang) for model, by_lang in rates.items() for lang in by_lang]
    x = np.arange(len(groups))
    figure = Figure(figsize=(max(4.0, 1.6 * len(groups) + 1.5), 3.6), layout="constrained")
    ax = figure.add_subplot()
    for offset, metric in ((-0.2, "wer"), (0.2, "cer")):
        values = [rates[m][lang][metric] for m, lang in groups]
        error = None
        if metric == "wer" and all("wer_ci_low" in rates[m][lang] for m, lang in groups):
            error = np.array([[rates[m][lang]["wer"] - rates[m][lang]["wer_ci_low"],
                               rates[m][lang]["wer_ci_high"] - rates[m][lang]["wer"]] for m, lang in groups]).T
        bars = ax.bar(x + offset, values, width=0.4, yerr=error, capsize=3, label=metric.upper())
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x, [f"{m}\n{lang}" for m, lang in groups])
    ax.set_xlabel("model / test language")
    ax.set_ylabel("error rate (test)")
    ax.set_ylim(0, max(1.1, ax.get_ylim()[1]))
    ax.set_title("Test error rates, greedy CTC decoding")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(figure, path)


def _styles(points: Sequence[SweepPoint]) -> dict[str, tuple[str, str]]:
    """A (marker, line style) per group of points, shared by both report figures."""
    styles = zip(sorted({p.group for p in points}), itertools.cycle("osD^vP*X"), itertools.cycle(["-", "--", ":", "-."]),
                 strict=False)
    return {group: (marker, line) for group, marker, line in styles}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both), sorted by x then y."""
    def dominated(i: int) -> bool:
        x, y = points[i]
        return any(a <= x and b <= y and (a, b) != (x, y) for a, b in points)
    return sorted((i for i in range(len(points)) if not dominated(i)), key=lambda i: points[i])


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


def plot_forgetting_vs_german(sweep: Sequence[SweepPoint], path: Path) -> bool:
    """Dutch forgetting (x, pp) against German WER after adaptation (y, %), Pareto front marked; False if no points."""
    kept = [p for p in sweep if p.rates["forgetting.nl.wer"].value is not None and p.rates["adapted.de.wer"].value is not None]
    if not kept:
        return False
    styles = _styles(kept)
    fig, ax = _figure()
    points = [(100 * p.rates["forgetting.nl.wer"].value, 100 * p.rates["adapted.de.wer"].value) for p in kept]
    for (x, y), p in zip(points, kept, strict=True):
        ax.errorbar(x, y, xerr=_error_bar(x, p.rates["forgetting.nl.wer"]), yerr=_error_bar(y, p.rates["adapted.de.wer"]),
                    fmt=styles[p.group][0], color="tab:blue", mfc="none", ecolor="0.7", elinewidth=0.8, capsize=2, ms=6)
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
    _place_labels(ax, points, [p.label for p in kept])
    _save(fig, path)
    return True


def plot_lambda_sweep(sweep: Sequence[SweepPoint], path: Path) -> bool:
    """Dutch and German WER after adaptation and forgetting against λ (symlog, so λ = 0 shows), one line style
    per group of the other swept params; False if no experiment has a λ and metrics."""
    kept = [p for p in sweep if p.lam is not None]
    if not kept:
        return False
    series = (("adapted.nl.wer", "Dutch WER after (%)", "tab:blue"), ("adapted.de.wer", "German WER after (%)", "tab:orange"),
              ("forgetting.nl.wer", "Dutch forgetting (pp)", "tab:red"))
    styles = _styles(kept)
    fig, ax = _figure()
    for group, (marker, line) in styles.items():
        members = sorted((p for p in kept if p.group == group), key=lambda p: p.lam)
        for key, _, color in series:
            xy = [(p.lam, 100 * p.rates[key].value) for p in members if p.rates[key].value is not None]
            ax.plot([x for x, _ in xy], [y for _, y in xy], ls=line, marker=marker, mfc="none", ms=6, color=color, lw=1.2)
    lambdas = sorted({p.lam for p in kept})
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
    _save(fig, path)
    return True


def _save(figure: Figure, path: Path) -> None:
    """Write `figure` as a PNG at `DPI`, atomically."""
    if not isinstance(figure.canvas, FigureCanvasAgg):  # the report's figures have drawn on theirs already
        FigureCanvasAgg(figure)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, dpi=DPI)
