"""Estimates across experiments from a real `dvc exp show --json`: intervals recomputed from the recorded
per-utterance predictions with each experiment's own settings, and paired comparisons checked against per-speaker
rates computed here from the TSVs."""

import copy
import csv
import io
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from forgetting.evaluation.estimates import compare_groups, estimate_group
from forgetting.evaluation.experiments import (
    Experiment,
    Group,
    ResultsError,
)
from forgetting.evaluation.scoring import combine, error_rates, read_predictions
from tests.unit.exp_show import experiment, fixture_predictions, group

RATE_KEYS = [f"{model}.{lang}.{rate}" for model in ("pretrained", "adapted") for lang in ("nl", "de") for rate in ("wer", "cer")]
CHANGE_KEYS = [f"{kind}.{rate}" for kind in ("forgetting.nl", "learning.de") for rate in ("wer", "cer")]


@pytest.mark.parametrize("name", ["lambda-1", "utterance-bootstrap", "min-speakers-9"])
def test_a_lone_experiments_intervals_are_its_eval_stage_intervals(name):
    lone = experiment(name)
    row, notes = estimate_group(Group((lone,)), fixture_predictions)
    assert notes == []
    for key in RATE_KEYS + CHANGE_KEYS:
        low, high = lone.metric(f"{key}_ci_low"), lone.metric(f"{key}_ci_high")
        assert row[key].value == lone.metric(key) and row[key].sd is None
        if low is None:  # min-speakers-9: 8 German speakers < 9
            assert row[key].interval is None and row[key].note == lone.metrics[key.split(".")[0]][key.split(".")[1]]["note"]
        else:
            assert row[key].interval == (low, high), key
    assert (row["adapted.de.wer"].interval is None) == (name == "min-speakers-9")
    other, _ = estimate_group(Group((lone,)), fixture_predictions, 500)  # computed from the predictions, not copied
    assert other["adapted.nl.wer"].interval != row["adapted.nl.wer"].interval


def runs_of(g: Group, file: str) -> list:
    return [read_predictions(fixture_predictions(e, file), file) for e in g.members]


def test_a_seed_group_is_the_mean_sd_and_the_two_level_interval():
    zero = group("lambda-0-seed-0")
    row, notes = estimate_group(zero, fixture_predictions)
    assert notes == []
    values = [e.metric("adapted.nl.wer") for e in zero.members]
    assert row["adapted.nl.wer"].value == pytest.approx(np.mean(values))
    assert row["adapted.nl.wer"].sd == pytest.approx(np.std(values, ddof=1)) and row["adapted.nl.wer"].sd > 0
    settings = (1000, 0, "speaker", 5)  # the group's eval.bootstrap_samples, seed, eval.bootstrap, eval.min_speakers
    own = combine([runs_of(zero, "adapted_nl.tsv")], [1.0], *settings, shared_seeds=True)
    assert row["adapted.nl.wer"].interval == (own["wer_ci_low"], own["wer_ci_high"])
    forgetting = combine([runs_of(zero, "pretrained_nl.tsv"), runs_of(zero, "adapted_nl.tsv")], [-1.0, 1.0], *settings,
                         shared_seeds=True)
    assert row["forgetting.nl.cer"].interval == (forgetting["cer_ci_low"], forgetting["cer_ci_high"])
    assert row["forgetting.nl.cer"].value == pytest.approx(np.mean([e.metric("forgetting.nl.cer") for e in zero.members]))
    # the three adapt seeds share one pretrained model: its interval is the lone run's, seeds add nothing
    lone = zero.members[0]
    assert row["pretrained.nl.wer"].sd == 0.0
    assert row["pretrained.nl.wer"].interval == pytest.approx(
        (lone.metric("pretrained.nl.wer_ci_low"), lone.metric("pretrained.nl.wer_ci_high")), rel=1e-12)
    assert row["awer"].interval is None and row["awer"].sd is not None


def test_stale_old_or_missing_predictions_are_not_used():
    lone, main = experiment("lambda-1"), experiment("main")

    def mains(_: Experiment, file: str) -> str | None:
        return fixture_predictions(main, file)
    row, notes = estimate_group(Group((lone,)), mains)
    assert any(n.startswith("lambda-1: adapted_nl.tsv gives WER 0.2667, the metrics 0.2103; not used") for n in notes)
    assert row["adapted.nl.wer"].interval == (lone.metric("adapted.nl.wer_ci_low"), lone.metric("adapted.nl.wer_ci_high"))
    row, notes = estimate_group(group("main"), lambda e, f: fixture_predictions(e, f) if e.name == "main" else None)
    assert "ewc-seed-1: adapted_nl.tsv not readable" in notes
    assert row["adapted.nl.wer"].interval is None and row["adapted.nl.wer"].sd is not None

    def without_speakers(e: Experiment, file: str) -> str:
        lines = fixture_predictions(e, file).splitlines()
        return "\n".join("\t".join(c for i, c in enumerate(line.split("\t")) if i != 1) for line in lines) + "\n"
    _, notes = estimate_group(Group((lone,)), without_speakers)
    assert any("no client_id column" in n and "re-run eval" in n for n in notes)
    old = copy.deepcopy(lone.params)
    del old["eval"]["bootstrap"], old["eval"]["min_speakers"]
    row, notes = estimate_group(Group((Experiment("old", lone.rev, old, lone.metrics),)), fixture_predictions)
    assert notes == ["old: no eval.bootstrap, eval.min_speakers in its params (run before speaker-level intervals): "
                     "no intervals"]
    assert all(e.interval is None for e in row.values())


def per_speaker(text: str) -> dict[str, float]:
    errors, words = defaultdict(int), defaultdict(int)
    for row in csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE):
        errors[row["client_id"]] += int(row["word_errors"])
        words[row["client_id"]] += int(row["ref_words"])
    return {speaker: errors[speaker] / words[speaker] for speaker in errors}


def test_a_comparison_is_the_difference_of_means_with_the_wilcoxon_p_of_per_speaker_rates():
    main, zero = group("main"), group("lambda-0-seed-0")
    comparison, notes = compare_groups(main, zero, fixture_predictions)
    assert notes == [] and (comparison.first, comparison.second) == (main, zero)
    for lang in ("nl", "de"):
        cell = comparison.cells[f"{lang}.wer"]
        means = [np.mean([e.metric(f"adapted.{lang}.wer") for e in g.members]) for g in (main, zero)]
        assert cell.value == pytest.approx(means[0] - means[1])
        assert cell.interval[0] <= cell.value <= cell.interval[1]
        rates = [[per_speaker(fixture_predictions(e, f"adapted_{lang}.tsv")) for e in g.members] for g in (main, zero)]
        speakers = sorted(rates[0][0])
        averaged = [np.array([np.mean([r[s] for r in runs]) for s in speakers]) for runs in rates]
        assert cell.p == pytest.approx(stats.wilcoxon(np.round(averaged[0] - averaged[1], 12)).pvalue)
    assert comparison.cells["nl.wer"].value < 0 and comparison.cells["nl.wer"].p < 0.05  # λ 0.25 forgets less than λ 0


def test_a_comparison_needs_the_same_test_utterances():
    def renamed(e: Experiment, file: str) -> str | None:
        text = fixture_predictions(e, file)
        return text.replace("common_voice_nl_1000", "common_voice_nl_9999") if e.name == "lambda-1" else text
    with pytest.raises(ResultsError, match=r"--compare lambda-1=mas on nl: .*common_voice_nl_1000\.mp3 against "
                                           r"common_voice_nl_9999\.mp3; a comparison needs the same test utterances"):
        compare_groups(group("lambda-1"), group("mas"), renamed)


def test_intervals_use_the_experiments_own_seed_and_method():
    lone = experiment("lambda-1")
    params = copy.deepcopy(lone.params)
    params["seed"], params["eval"]["bootstrap"] = 7, "utterance"
    row, _ = estimate_group(Group((Experiment(lone.name, lone.rev, params, lone.metrics),)), fixture_predictions)
    own = error_rates(read_predictions(fixture_predictions(lone, "adapted_de.tsv"), "x"), 1000, 7, "utterance", 5)
    assert row["adapted.de.cer"].interval == (own["cer_ci_low"], own["cer_ci_high"])
    assert row["adapted.de.cer"].interval != (lone.metric("adapted.de.cer_ci_low"), lone.metric("adapted.de.cer_ci_high"))
