"""The thesis tables from a real `dvc exp show --json`: seed-group rows, each method's own columns, withheld
intervals, the notes, the comparison table's significance marks, tiny and missing values, and the LaTeX."""

import copy
import re

import numpy as np
import pytest

from forgetting.evaluation.estimates import compare_groups
from forgetting.evaluation.render import format_estimate, format_percent, render_latex, render_markdown, significance
from forgetting.evaluation.scoring import Estimate
from tests.unit.exp_show import METRICS, RECORDS, experiment_record, fixture_predictions, table


def test_seed_groups_and_method_columns():
    cells, groups, _ = table(RECORDS, samples=None)
    main = cells["main"]
    assert (main["seeds"], main["method"], main["λ"], main["importance norm."], main["Fisher"]) == ("4", "ewc", "0.25",
                                                                                                 "mean", "empirical")
    members = next(g for g in groups if g.name == "main").members
    values = [e.metric("adapted.nl.wer") for e in members]
    mean, sd, low, high = re.fullmatch(r"(\S+) ± (\S+) \[(\S+), (\S+)\]", main["nl WER after (%)"]).groups()
    assert (mean, sd) == (f"{100 * np.mean(values):.1f}", f"{100 * np.std(values, ddof=1):.1f}")
    assert float(low) < float(mean) < float(high)
    assert re.fullmatch(r"\S+ \[\S+, \S+\]", cells["lambda-1"]["nl WER after (%)"])  # one seed: no ± sd
    assert (cells["lora"]["λ"], cells["lora"]["LoRA rank"], cells["lora"]["KD weight"]) == ("–", "4", "–")
    assert (cells["lwf"]["KD weight"], cells["lwf"]["KD T"], cells["lwf"]["Fisher"]) == ("1", "2", "–")
    assert (cells["l2-seed-0"]["λ"], cells["l2-seed-0"]["importance norm."]) == ("0.25", "–")  # λ alone: F = 1
    assert (cells["replay"]["replay"], cells["main"]["replay"]) == ("0.25", "0")  # it varies: shown for every method
    assert cells["min-speakers-9"]["de WER after (%)"].endswith(" †")  # 8 German speakers, fewer than 9
    assert cells["min-speakers-9"]["nl WER after (%)"].endswith("]")
    for absent in ("steps", "pretrain lr", "Fisher loss", "avg. α"):  # the same in every row
        assert absent not in main


def test_notes_say_how_the_numbers_were_computed():
    _, groups, rows = table(RECORDS, samples=None)
    text = render_markdown(groups, rows)
    assert "† no interval: 8 speakers, fewer than eval.min_speakers = 9." in text
    assert ("Seed groups (pretrain.seed, adapt.seed): lambda-0-seed-0: lambda-0-seed-0 (0, 0), lambda-0-seed-1 (0, 1), "
            "lambda-0-seed-2 (0, 2); main: main (0, 0), ewc-seed-1 (0, 1), ewc-seed-2 (0, 2), ewc-pretrain-seed-1 (1, 0)") in text
    assert "over utterances, 1000 resamples for utterance-bootstrap" in text
    assert "two-level bootstrap that resamples seeds and speakers together" in text
    overridden = render_markdown(groups, table(RECORDS, 200)[2], samples=200)
    assert "95 % bootstrap intervals over speakers (each resample keeps every utterance of the speakers it draws), " \
           "200 resamples for" in overridden


def test_an_optional_param_gets_a_column_when_it_varies():
    records = copy.deepcopy(RECORDS)
    experiment_record(records, "lambda-1")["data"]["params"]["params.yaml"]["data"]["adapt"]["max_steps"] = 1234
    cells, _, _ = table(records)
    assert cells["lambda-1"]["steps"] == "1234" and cells["main"]["steps"] != "1234"
    assert "frozen CNN" not in cells["main"]


@pytest.mark.parametrize(("p", "mark"), [(0.0499, "*"), (0.05, ""), (0.0099, "**"), (0.01, "*"), (0.00099, "***"),
                                         (0.001, "**"), (0.7, "")])
def test_significance_marks(p, mark):
    assert significance(p) == mark


def test_estimate_cells():
    assert format_estimate(Estimate(-0.051, (-0.07, -0.032), p=0.004)) == "-5.1** [-7.0, -3.2], p = 0.004"
    assert format_estimate(Estimate(0.2, (0.1, 0.3), p=0.0004)) == "20.0*** [10.0, 30.0], p < 0.001"
    assert format_estimate(Estimate(0.2, None, p=0.5)) == "20.0, p = 0.500"
    assert format_estimate(Estimate(0.123, (0.1, 0.15), sd=0.0004)) == "12.3 ± <0.1 [10.0, 15.0]"
    assert format_estimate(Estimate(0.123, note="no interval: 3 speakers")) == "12.3 †"
    assert format_estimate(Estimate(None, note="x")) == "–"
    assert [format_percent(v) for v in (0.123, 0.0, -0.0004, 0.0004, -0.05, None)] == [
        "12.3", "0.0", ">-0.1", "<0.1", "-5.0", "–"]


def comparison_table(text: str) -> list[list[str]]:
    block = next(b for b in text.split("\n\n") if b.startswith("| comparison"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()]


def test_comparison_table_marks_follow_the_p_values():
    _, groups, rows = table(RECORDS)
    main, zero = (next(g for g in groups if g.name == n) for n in ("main", "lambda-0-seed-0"))
    comparison, _ = compare_groups(main, zero, fixture_predictions)
    lines = comparison_table(render_markdown(groups, rows, [comparison]))
    assert lines[0] == ["comparison (A - B)", "nl WER (pp)", "nl CER (pp)", "de WER (pp)", "de CER (pp)"]
    assert lines[2][0] == "main - lambda-0-seed-0"
    for cell, key in zip(lines[2][1:], ("nl.wer", "nl.cer", "de.wer", "de.cer"), strict=True):
        estimate = comparison.cells[key]
        value, marks = re.match(r"(-?\d+\.\d)(\**) \[", cell).groups()
        assert value == f"{100 * estimate.value:.1f}" and marks == significance(estimate.p)
    assert lines[2][1].startswith(f"{100 * comparison.cells['nl.wer'].value:.1f}*")  # λ 0.25 forgets less than λ 0
    assert "two-sided Wilcoxon signed-rank test on per-speaker error rates" in render_markdown(groups, rows, [comparison])
    assert "| comparison" not in render_markdown(groups, rows)


def test_latex_has_booktabs_rules_and_escapes():
    records = copy.deepcopy(RECORDS)
    record = experiment_record(records, "lambda-1")
    record["data"]["metrics"][METRICS]["data"]["awer"] = 0.0004
    record["name"] = "a&b_50%"
    _, groups, rows = table(records)
    main, zero = (next(g for g in groups if g.name == n) for n in ("main", "lambda-0-seed-0"))
    tex = render_latex(groups, rows, [compare_groups(main, zero, fixture_predictions)[0]])
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
        assert tex.count(rule) == 2, rule
    assert r"$\lambda$" in tex and r"LoRA $\alpha$" in tex and r"nl WER after (\%)" in tex and r"$\pm$" in tex
    assert "a\\&b\\_50\\% & 1 & ewc & 1 &" in tex
    assert r"\textless{}0.1 \\" in tex and r"\textdagger{}" in tex and "–" not in tex and "±" not in tex
    assert "main - lambda-0-seed-0 & " in tex and "**" in tex
    assert not re.search(r"(?<!\\)[%_]", tex)  # every % and _ escaped
