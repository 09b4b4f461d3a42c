"""Results across experiments from a real `dvc exp show --json`: parsing, selection, and intervals recomputed from
the recorded per-utterance predictions with each experiment's own seed."""

import copy

import pytest

from forgetting.results import Experiment, ResultsError, estimate_row, parse_exp_show, select_experiments
from forgetting.scoring import Estimate, error_rates, read_predictions
from tests.unit.exp_show import FIXTURES, METRICS, RECORDS, experiment_record, fixture_predictions


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
    with pytest.raises(ResultsError, match="--exp nope: no such experiment"):
        select_experiments(found, ["nope"])












@pytest.mark.parametrize("name", ["main", "ewc-lambda-0"])
def test_bootstrap_intervals_come_from_the_predictions(name):
    found, _ = parse_exp_show(RECORDS, METRICS)
    experiment = next(e for e in found if e.name == name)
    columns = {"pretrained.nl.wer": "pretrained.nl", "adapted.nl.wer": "adapted.nl", "pretrained.de.wer": "pretrained.de",
               "adapted.de.wer": "adapted.de", "forgetting": "forgetting.nl"}
    # eval's own resampling (1000, seed 0; paired for forgetting) gives exactly the intervals in its metrics ...
    row, notes = estimate_row(experiment, fixture_predictions, 1000)
    assert notes == []
    for column, key in columns.items():
        low, high = row[column].interval
        assert (low, high) == (experiment.metric(f"{key}.wer_ci_low"), experiment.metric(f"{key}.wer_ci_high")), column
        assert low <= row[column].value <= high
    # ... and other resamples give other ones: they are computed from the predictions, not copied from the metrics
    row, _ = estimate_row(experiment, fixture_predictions, 500)
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
    row, _ = estimate_row(same, source, 500)
    assert row["forgetting"] == Estimate(0.0, (0.0, 0.0))


def test_stale_predictions_are_not_used():
    found, _ = parse_exp_show(RECORDS, METRICS)
    zero = next(e for e in found if e.name == "ewc-lambda-0")

    def main_files(experiment: Experiment, file: str) -> str | None:
        return (FIXTURES / "predictions" / "34b6578" / file).read_text(encoding="utf-8")
    row, notes = estimate_row(zero, main_files, 500)
    assert any("adapted_nl.tsv gives WER 0.2584, the metrics 0.3301; not used" in n for n in notes)
    metrics = zero.metrics["adapted"]["nl"]
    assert row["adapted.nl.wer"].interval == (metrics["wer_ci_low"], metrics["wer_ci_high"])  # the eval stage's


def test_intervals_use_the_experiments_own_seed_and_resamples():
    found, _ = parse_exp_show(RECORDS, METRICS)
    main = next(e for e in found if e.name == "main")
    reseeded = Experiment(main.name, main.rev, copy.deepcopy(main.params), main.metrics)
    reseeded.params["seed"] = 7
    scores = read_predictions(fixture_predictions(main, "adapted_de.tsv"), "adapted_de.tsv")
    samples = main.param("eval.bootstrap_samples")
    own = error_rates(scores, samples, seed=7)
    row, _ = estimate_row(reseeded, fixture_predictions)
    assert row["adapted.de.wer"].interval == (own["wer_ci_low"], own["wer_ci_high"])
    assert row["adapted.de.wer"].interval != estimate_row(main, fixture_predictions)[0]["adapted.de.wer"].interval

