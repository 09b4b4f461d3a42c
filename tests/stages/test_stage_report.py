"""The report CLI on a recorded `dvc exp show --json`: one call writes the seed-grouped tables with the comparisons
the README asks for (the default against λ = 0, EWC against L2) and the figures; it refuses unknown names and no
experiments, in one line."""

import sys

import pytest

from stages import cli, report
from tests.unit.exp_show import RECORDS, fixture_predictions


def run(monkeypatch, records: list, *args: str) -> None:
    monkeypatch.setattr(report, "read_exp_show", lambda: records)
    monkeypatch.setattr(report, "git_files", lambda folder: fixture_predictions)
    monkeypatch.setattr(sys, "argv", ["report", "--out", "thesis", *args])
    cli.run(report.main)


def test_one_call_writes_groups_comparisons_and_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run(monkeypatch, RECORDS, "--bootstrap", "100", "--exp", "main", "ewc-seed-1", "ewc-seed-2", "lambda-0-seed-0",
        "lambda-0-seed-1", "lambda-0-seed-2", "l2-seed-0", "l2-seed-1", "l2-seed-2",
        "--compare", "main=lambda-0-seed-0", "--compare", "ewc-seed-2=l2-seed-1")
    written = sorted(p.name for p in (tmp_path / "thesis").iterdir())
    assert written == ["forgetting_vs_german.png", "lambda_sweep.png", "results.md", "results.tex"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        "report: 9 experiments in 3 rows, 2 comparisons, 100 bootstrap resamples -> "
        "thesis/{results.md,results.tex,forgetting_vs_german.png,lambda_sweep.png}")
    markdown = (tmp_path / "thesis" / "results.md").read_text(encoding="utf-8")
    rows = [line.split(" | ")[:2] for line in markdown.splitlines() if line.startswith("| ") and " ± " in line]
    assert rows == [["| lambda-0-seed-0", "3"], ["| main", "3"], ["| l2-seed-0", "3"]]
    assert "| main - lambda-0-seed-0 | " in markdown and "| main - l2-seed-0 | " in markdown
    assert "*" in markdown.split("| main - lambda-0-seed-0 | ")[1].split(" | ")[0]  # nl WER: λ 0 forgets more
    assert r"main - lambda-0-seed-0 & " in (tmp_path / "thesis" / "results.tex").read_text(encoding="utf-8")


def test_unknown_names_and_no_experiments_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^report: --compare nope: no experiment of the report matches"):
        run(monkeypatch, RECORDS, "--compare", "main=nope")
    with pytest.raises(SystemExit, match=r"^report: --baseline lambda-1: no experiment of the report matches"):
        run(monkeypatch, RECORDS, "--exp", "main", "--baseline", "lambda-1")
    failed_only = [{**RECORDS[1], "experiments": [g for g in RECORDS[1]["experiments"] if g["name"] == "negative-lambda"],
                    "data": {"metrics": {}}}]
    with pytest.raises(SystemExit, match=r"no experiments with metrics in reports/metrics\.json"):
        run(monkeypatch, failed_only)
    assert not (tmp_path / "thesis").exists()
