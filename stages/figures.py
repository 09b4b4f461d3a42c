"""Figures for print drawn from stage results (matplotlib, Agg canvas, no pyplot state): where the Fisher
mass sits by layer, the adapt learning curves with the EWC penalty, and the test error rates."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

_NUMBERED = re.compile(r"^((?:feature_extractor\.conv_layers|encoder\.layers)\.\d+)\.")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: `wav2vec2.encoder.layers.3.attention.q_proj.weight` -> `encoder.layers.3`,
    `lm_head.bias` -> `lm_head`, `wav2vec2.encoder.pos_conv_embed.conv.weight_g` -> `encoder.pos_conv_embed`."""
    name = name.removeprefix("wav2vec2.")
    numbered = _NUMBERED.match(name)
    if numbered:
        return numbered.group(1)
    modules = name.split(".")[:-1]  # without the parameter's own name
    return ".".join(modules[:2]) if modules else name


def fisher_by_layer(fisher: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """Per layer, in model order: entries, sum, mean and max of the Fisher, and its share of the total sum."""
    layers: dict[str, dict[str, float]] = {}
    for name, tensor in fisher.items():
        stats = layers.setdefault(layer_of(name), {"entries": 0, "sum": 0.0, "max": 0.0})
        stats["entries"] += tensor.numel()
        stats["sum"] += float(tensor.double().sum())
        stats["max"] = max(stats["max"], float(tensor.max()))
    total = sum(s["sum"] for s in layers.values()) or 1.0
    for stats in layers.values():
        stats["mean"] = stats["sum"] / stats["entries"]
        stats["share"] = stats["sum"] / total
    return layers


def plot_fisher_by_layer(layers: Mapping[str, Mapping[str, float]], title: str, path: Path) -> None:
    """Bars of each layer's share of the Fisher mass (sum) and of the parameters, bottom layer first."""
    names = list(layers)
    entries = sum(s["entries"] for s in layers.values())
    figure = Figure(figsize=(7.0, 0.28 * len(names) + 1.6), layout="constrained")
    ax = figure.add_subplot()
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [100 * layers[n]["share"] for n in names], height=0.4, label="Fisher mass")
    ax.barh([i + 0.2 for i in y], [100 * layers[n]["entries"] / entries for n in names], height=0.4,
            label="parameters", alpha=0.6)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("share of the total (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    _save(figure, path)


def read_curve(path: Path, column: str) -> tuple[list[int], list[float]]:
    """A dvclive curve TSV (`step`, `column`) as two lists; empty when the file does not exist."""
    if not path.is_file():
        return [], []
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [int(r["step"]) for r in rows], [float(r[column]) for r in rows]


def plot_adapt_curves(curves_dir: Path, path: Path) -> None:
    """Training CTC loss and penalty per step, and dev WER/CER per evaluation, from dvclive's `plots/metrics`."""
    figure = Figure(figsize=(9.0, 3.4), layout="constrained")
    loss_ax, dev_ax = figure.subplots(1, 2)
    for name, label in (("ctc_loss", "CTC loss (train)"), ("penalty", "penalty (λ/2)·ΣF(θ−θ*)²"), ("loss", "total (train)")):
        steps, values = read_curve(curves_dir / "train" / f"{name}.tsv", name)
        loss_ax.plot(steps, values, label=label)
    steps, values = read_curve(curves_dir / "eval" / "loss.tsv", "loss")
    loss_ax.plot(steps, values, "o--", label="CTC loss (dev)")
    loss_ax.set_xlabel("optimiser step")
    loss_ax.set_ylabel("loss (per utterance, nats)")
    loss_ax.set_yscale("symlog", linthresh=0.01)
    loss_ax.legend(fontsize=8)
    for name in ("wer", "cer"):
        steps, values = read_curve(curves_dir / "eval" / f"{name}.tsv", name)
        dev_ax.plot(steps, [100 * v for v in values], "o-", label=f"dev {name.upper()}")
    dev_ax.set_xlabel("optimiser step")
    dev_ax.set_ylabel("error rate (%)")
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


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=200)
