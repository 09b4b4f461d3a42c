"""Every figure is a PNG: the importance by layer, the adapt curves with the forgetting curve, the error rates, and the
report's figures; the Pareto front on hand-made points."""

import torch

from forgetting.curves import TRAIN_CTC_LOSS, TRAIN_PENALTY, curve_file, dev_curve
from forgetting.evaluation.figures import (
    pareto_front,
    plot_adapt_curves,
    plot_error_rates,
    plot_forgetting_vs_german,
    plot_importance_by_layer,
    plot_lambda_sweep,
)
from forgetting.evaluation.render import sweep_points
from forgetting.evaluation.scoring import Estimate
from forgetting.methods.importance import importance_by_layer
from tests.unit.exp_show import RECORDS, table


def test_stage_figures_are_png(tmp_path):
    plot_importance_by_layer(importance_by_layer({"lm_head.weight": torch.ones(2)}), "title", tmp_path / "f.png")
    live = tmp_path / "adapt"
    for curve, values in ((TRAIN_CTC_LOSS, [3.0, 1.0]), (TRAIN_PENALTY, [0.0, 0.2]), (dev_curve("nl", "wer"), [0.3, 0.5])):
        column = curve.rsplit("/", 1)[-1]
        curve_file(live, curve).parent.mkdir(parents=True, exist_ok=True)
        curve_file(live, curve).write_text(f"step\t{column}\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)))
    plot_adapt_curves(live, "de", "nl", tmp_path / "c.png")  # the other dev curves are missing: drawn empty
    for name in ("f.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_error_rate_figure(tmp_path):
    rates = {"pretrained": {"nl": {"wer": 0.4, "cer": 0.1, "wer_ci_low": 0.3, "wer_ci_high": 0.5},
                            "de": {"wer": 0.9, "cer": 0.5, "wer_ci_low": 0.8, "wer_ci_high": 1.0}}}
    plot_error_rates(rates, tmp_path / "figures" / "error_rates.png")
    png = (tmp_path / "figures" / "error_rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_pareto_front_on_hand_made_points():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (5.0, 1.0), (0.5, 6.0), (2.0, 3.0)]
    # (3, 4) is beaten by (2, 3); (5, 1) by (4, 1); the duplicate (2, 3) dominates neither copy
    assert pareto_front(points) == [5, 0, 1, 6, 3]
    assert pareto_front([(1.0, 1.0)]) == [0]


def test_report_figures_are_png(tmp_path):
    _, groups, rows = table(RECORDS, samples=200)
    sweep = sweep_points(groups, rows)
    points = {p.label: p for p in sweep}  # every method, labelled by its own knobs; repeated labels get the row's name
    assert {"ewc λ=0", "ewc λ=0.25 (main)", "ewc λ=0.25 replay=0.25", "l2 λ=0.25", "mas λ=1",
            "lwf w=1 T=2", "lora r=4 α=16"} <= set(points)
    assert (points["lwf w=1 T=2"].lam, points["lora r=4 α=16"].lam, points["mas λ=1"].lam) == (None, None, 1.0)
    assert (points["l2 λ=0.25"].group, points["ewc λ=0.25 replay=0.25"].group) == ("method l2, replay 0",
                                                                                   "method ewc, replay 0.25")
    for plot, name in ((plot_forgetting_vs_german, "pareto.png"), (plot_lambda_sweep, "sweep.png")):
        assert plot(sweep, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = sweep_points(groups[:1], [dict.fromkeys(rows[0], Estimate(None))])
    assert not plot_forgetting_vs_german(empty, tmp_path / "none.png")
