"""The thesis report: parsing a real `dvc exp show --json`, the table's cells, intervals, Pareto front, figures.

`tests/fixtures/exp_show.json` was recorded with DVC 3.67 in a throw-away repo whose one stage imitates the
eval stage (made-up hypotheses, scored with `stages.scoring`): a baseline (λ 0.4) and experiments λ 0, 0.1, 1,
l2, lr 1e-5 (λ 0.4 and 1), Fisher normalised by max, one whose metrics file is truncated, one that failed in
the queue and one still queued (`deps`/`outs` trimmed). `tests/fixtures/predictions/<rev>/` holds the
per-utterance TSVs of the baseline (34b6578) and of `ewc-lambda-0` (c92eb22), as `git show` returned them.
"""

import copy
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from stages import report
from stages.report import pareto_front, plot_forgetting_vs_german, plot_lambda_sweep, select_experiments
from stages.tables import (
    Estimate,
    Experiment,
    estimate_row,
    format_percent,
    parse_exp_show,
    read_predictions,
    render_latex,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = json.loads((FIXTURES / "exp_show.json").read_text(encoding="utf-8"))
METRICS = "reports/metrics.json"


def fixture_predictions(experiment: Experiment, file: str) -> str | None:
    path = FIXTURES / "predictions" / experiment.rev[:7] / file
    return path.read_text(encoding="utf-8") if path.is_file() else None


def table(records: list, samples: int = 1000) -> tuple[dict[str, dict[str, str]], list[Experiment], list]:
    """The Markdown table of `records` as {experiment: {header: cell}}, with the experiments and their rows."""
    experiments, _ = select_experiments(parse_exp_show(records, METRICS)[0], [])
    rows = [estimate_row(e, fixture_predictions, samples, seed=0)[0] for e in experiments]
    lines = render_markdown(experiments, rows).splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        cells[values[0]] = dict(zip(header, values, strict=True))
    return cells, experiments, rows


def experiment_record(records: list, name: str) -> dict:
    return next(r for group in records[1]["experiments"] for r in group["revs"] if r["name"] == name)


def test_parse_exp_show_skips_failed_queued_and_unreadable():
    found, notes = parse_exp_show(RECORDS, METRICS)
    assert {e.name for e in found} == {"workspace", "main", "ewc-lambda-0", "pally-slew", "owing-runs", "l2-baseline",
                                       "lr-1e-5", "lr-1e-5-lambda-1", "fisher_max"}
    # the failed run still shows metrics (left by an earlier run in its tree): they must not reach the table
    assert "data" in experiment_record(RECORDS, "negative-lambda")["data"]["metrics"][METRICS]
    assert any(n.startswith("negative-lambda: skipped, the experiment failed") for n in notes)
    assert any(n.startswith("still-queued: skipped, queued") for n in notes)
    assert any(n.startswith("broken-metrics: skipped") and "corrupted" in n for n in notes)
    main = next(e for e in found if e.name == "main")
    assert main.param("adapt.ewc_lambda") == 0.4 and main.metric("adapted.nl.wer") == pytest.approx(0.2583732)


def test_select_drops_the_workspace_twin_and_filters_by_name_or_rev():
    found, _ = parse_exp_show(RECORDS, METRICS)
    chosen, notes = select_experiments(found, [])
    assert "workspace" not in [e.name for e in chosen]
    assert notes == ["workspace: same params and metrics as main; one row for both"]
    assert [e.name for e in select_experiments(found, ["ewc-lambda-0", "34b6578"])[0]] == ["ewc-lambda-0", "main"]
    with pytest.raises(SystemExit, match="--exp nope: no such experiment"):
        select_experiments(found, ["nope"])


def test_table_cells():
    cells, _, _ = table(RECORDS)
    zero = cells["ewc-lambda-0"]
    assert (zero["λ"], zero["method"], zero["Fisher norm."]) == ("0", "ewc", "mean")
    assert zero["nl WER after (%)"].startswith("33.0 [")  # 0.330143... with its bootstrap interval
    assert zero["forgetting nl WER (pp)"].startswith("11.5 [")
    assert zero["AWER (%)"] == "22.0"
    assert cells["lr-1e-5"]["lr"] == "1e-05"
    assert cells["fisher_max"]["Fisher norm."] == "max"
    assert "pretrain lr" not in zero  # it does not vary here
    low, high = map(float, re.fullmatch(r"11\.5 \[(.+), (.+)\]", zero["forgetting nl WER (pp)"]).groups())
    assert 0 < low < 11.5 < high


def test_an_optional_param_gets_a_column_when_it_varies():
    records = copy.deepcopy(RECORDS)
    experiment_record(records, "owing-runs")["data"]["params"]["params.yaml"]["data"]["adapt"]["max_steps"] = 1234
    cells, _, _ = table(records)
    assert cells["owing-runs"]["steps"] == "1234" and cells["main"]["steps"] != "1234"
    assert "frozen CNN" not in cells["main"]  # the same in every experiment


def test_tiny_values_are_never_zero_and_missing_values_are_dashes():
    records = copy.deepcopy(RECORDS)
    metrics = experiment_record(records, "owing-runs")["data"]["metrics"][METRICS]["data"]
    metrics["forgetting"] = {"nl": {"wer": 0.0004, "cer": -0.0004}}
    del metrics["adapted"]["de"]["cer"]
    cells, _, _ = table(records)
    assert cells["owing-runs"]["forgetting nl WER (pp)"] == "<0.1"
    assert cells["owing-runs"]["de CER after (%)"] == "–"
    assert [format_percent(v) for v in (0.123, 0.0, -0.0004, 0.0004, -0.05, None)] == [
        "12.3", "0.0", ">-0.1", "<0.1", "-5.0", "–"]


def test_latex_has_booktabs_rules_and_escapes():
    records = copy.deepcopy(RECORDS)
    owing = experiment_record(records, "owing-runs")
    owing["data"]["metrics"][METRICS]["data"]["forgetting"] = {"nl": {"wer": 0.0004}}
    owing["name"] = "a&b_50%"
    _, experiments, rows = table(records)
    tex = render_latex(experiments, rows)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert r"$\lambda$" in tex and r"fisher\_max" in tex and r"nl WER after (\%)" in tex
    assert "a\\&b\\_50\\% & 1 & ewc" in tex
    assert r"\textless{}0.1" in tex and "–" not in tex
    assert not re.search(r"(?<!\\)[%_]", tex)  # every % and _ escaped


def test_pareto_front_on_hand_made_points():
    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (5.0, 1.0), (0.5, 6.0), (2.0, 3.0)]
    # (3, 4) is beaten by (2, 3); (5, 1) by (4, 1); the duplicate (2, 3) dominates neither copy
    assert pareto_front(points) == [5, 0, 1, 6, 3]
    assert pareto_front([(1.0, 1.0)]) == [0]


@pytest.mark.parametrize("name", ["main", "ewc-lambda-0"])
def test_bootstrap_intervals_come_from_the_predictions(name):
    found, _ = parse_exp_show(RECORDS, METRICS)
    experiment = next(e for e in found if e.name == name)
    columns = {"pretrained.nl.wer": "pretrained.nl", "adapted.nl.wer": "adapted.nl", "pretrained.de.wer": "pretrained.de",
               "adapted.de.wer": "adapted.de", "forgetting": "forgetting.nl"}
    # eval's own resampling (1000, seed 0; paired for forgetting) gives exactly the intervals in its metrics ...
    row, notes = estimate_row(experiment, fixture_predictions, 1000, seed=0)
    assert notes == []
    for column, key in columns.items():
        low, high = row[column].interval
        assert (low, high) == (experiment.metric(f"{key}.wer_ci_low"), experiment.metric(f"{key}.wer_ci_high")), column
        assert low <= row[column].value <= high
    # ... and other resamples give other ones: they are computed from the predictions, not copied from the metrics
    row, _ = estimate_row(experiment, fixture_predictions, 500, seed=0)
    assert all(row[c].interval != (experiment.metric(f"{k}.wer_ci_low"), experiment.metric(f"{k}.wer_ci_high"))
               for c, k in columns.items())


def test_paired_interval_of_identical_systems_is_zero():
    found, _ = parse_exp_show(RECORDS, METRICS)
    main = next(e for e in found if e.name == "main")
    metrics = copy.deepcopy(main.metrics)
    metrics["adapted"]["nl"] = metrics["pretrained"]["nl"]
    metrics["forgetting"] = {"nl": {"wer": 0.0, "cer": 0.0}}
    same = Experiment(name="same", rev=main.rev, params=main.params, metrics=metrics)

    def source(experiment: Experiment, file: str) -> str | None:
        return fixture_predictions(experiment, "pretrained_nl.tsv" if file == "adapted_nl.tsv" else file)
    row, _ = estimate_row(same, source, 500, seed=0)
    assert row["forgetting"] == Estimate(0.0, (0.0, 0.0))


def test_stale_predictions_are_not_used():
    found, _ = parse_exp_show(RECORDS, METRICS)
    zero = next(e for e in found if e.name == "ewc-lambda-0")

    def main_files(experiment: Experiment, file: str) -> str | None:
        return (FIXTURES / "predictions" / "34b6578" / file).read_text(encoding="utf-8")
    row, notes = estimate_row(zero, main_files, 500, seed=0)
    assert any("adapted_nl.tsv gives WER 0.2584, the metrics 0.3301; not used" in n for n in notes)
    metrics = zero.metrics["adapted"]["nl"]
    assert row["adapted.nl.wer"].interval == (metrics["wer_ci_low"], metrics["wer_ci_high"])  # the eval stage's


def test_malformed_predictions_name_the_file_and_line():
    text = (FIXTURES / "predictions" / "34b6578" / "adapted_nl.tsv").read_text(encoding="utf-8")
    broken = text.replace("\t4\t", "\tfour\t", 1)
    with pytest.raises(ValueError, match=r"main:adapted_nl.tsv line \d+: expected 7 columns"):
        read_predictions(broken, "main:adapted_nl.tsv")
    with pytest.raises(ValueError, match="header must be"):
        read_predictions("path\tref\n", "x.tsv")


def test_figures_are_png(tmp_path):
    _, experiments, rows = table(RECORDS, samples=200)
    for plot, name in ((plot_forgetting_vs_german, "pareto.png"), (plot_lambda_sweep, "sweep.png")):
        assert plot(experiments, rows, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_forgetting_vs_german(experiments[:1], [dict.fromkeys(rows[0], Estimate(None))], tmp_path / "none.png")


def test_command_writes_everything_and_refuses_no_experiments(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "read_exp_show", lambda: RECORDS)
    monkeypatch.setattr(report, "git_predictions", lambda folder: fixture_predictions)
    monkeypatch.setattr(sys, "argv", ["report", "--out", "thesis", "--bootstrap", "100"])
    report.main()
    written = sorted(p.name for p in (tmp_path / "thesis").iterdir())
    assert written == ["forgetting_vs_german.png", "lambda_sweep.png", "results.md", "results.tex"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("report: 8 experiments, 100 bootstrap resamples -> thesis/")

    failed_only = [{**RECORDS[1], "experiments": [g for g in RECORDS[1]["experiments"] if g["name"] == "negative-lambda"],
                    "data": {"metrics": {}}}]
    monkeypatch.setattr(report, "read_exp_show", lambda: failed_only)
    with pytest.raises(SystemExit, match=r"no experiments with metrics in reports/metrics\.json"):
        report.main()
