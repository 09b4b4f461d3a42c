"""The thesis table from a real `dvc exp show --json`: its cells, optional columns, tiny and missing values, LaTeX."""

import copy
import re

from forgetting.render import format_percent, render_latex
from tests.unit.exp_show import METRICS, RECORDS, experiment_record, table


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
