"""The report CLI on a recorded `dvc exp show --json`: it writes the tables and figures, and refuses to write
them from no experiment."""

import sys

import pytest

from stages import report
from tests.unit.exp_show import RECORDS, fixture_predictions


def test_command_writes_everything_and_refuses_no_experiments(tmp_path, monkeypatch, capsys):
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
