"""Results across experiments from a real `dvc exp show --json`: parsing, selection, seed groups, intervals recomputed
from the recorded per-utterance predictions with each experiment's own settings, and paired comparisons checked
against per-speaker rates computed here from the TSVs."""

import copy
import csv
import io
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from forgetting.render import ORDER_KEYS
from forgetting.results import (
    Experiment,
    Group,
    ResultsError,
    compare_groups,
    comparison_pairs,
    estimate_group,
    git_predictions,
    group_by_seed,
    parse_exp_show,
    select_experiments,
)
from forgetting.scoring import combine, error_rates, read_predictions
from tests.unit.exp_show import METRICS, RECORDS, experiment_record, fixture_predictions, groups_of

RATE_KEYS = [f"{model}.{lang}.{rate}" for model in ("pretrained", "adapted") for lang in ("nl", "de") for rate in ("wer", "cer")]
CHANGE_KEYS = [f"{kind}.{rate}" for kind in ("forgetting.nl", "learning.de") for rate in ("wer", "cer")]


def experiment(name: str) -> Experiment:
    return next(e for e in parse_exp_show(RECORDS, METRICS)[0] if e.name == name)


def group(name: str) -> Group:
    return next(g for g in groups_of(RECORDS) if any(e.name == name for e in g.members))


def test_parse_exp_show_skips_failed_queued_and_unreadable():
    found, notes = parse_exp_show(RECORDS, METRICS)
    assert {e.name for e in found} == {
        "workspace", "main", "ewc-seed-1", "ewc-seed-2", "ewc-pretrain-seed-1", "lambda-0-seed-0", "lambda-0-seed-1",
        "lambda-0-seed-2", "l2-seed-0", "l2-seed-1", "l2-seed-2", "lambda-1", "mas", "lwf", "lora", "replay",
        "utterance-bootstrap", "min-speakers-9"}
    # the failed run still shows metrics (left by an earlier run in its tree): they must not reach the table
    assert "data" in experiment_record(RECORDS, "negative-lambda")["data"]["metrics"][METRICS]
    assert any(n.startswith("negative-lambda: skipped, the experiment failed") for n in notes)
    assert any(n.startswith("still-queued: skipped, queued") for n in notes)
    assert any(n.startswith("broken-metrics: skipped") and "corrupted" in n for n in notes)
    main = experiment("main")
    assert main.param("adapt.ewc_lambda") == 0.25 and main.metric("interval.samples") == 1000


def test_select_drops_the_workspace_twin_and_filters_by_name_or_rev():
    found, _ = parse_exp_show(RECORDS, METRICS)
    chosen, notes = select_experiments(found, [], ORDER_KEYS)
    assert "workspace" not in [e.name for e in chosen]
    assert notes == ["workspace: same params and metrics as main; one row for both"]
    picked, _ = select_experiments(found, ["lambda-1", experiment("lambda-0-seed-0").rev[:7]], ORDER_KEYS)
    assert [e.name for e in picked] == ["lambda-0-seed-0", "lambda-1"]  # λ 0 before λ 1
    with pytest.raises(ResultsError, match="--exp nope: no such experiment"):
        select_experiments(found, ["nope"], ORDER_KEYS)


def test_experiments_that_differ_only_in_a_training_seed_form_one_group():
    groups = groups_of(RECORDS)
    members = {g.name: [e.name for e in g.members] for g in groups}
    assert members["main"] == ["main", "ewc-seed-1", "ewc-seed-2", "ewc-pretrain-seed-1"]  # (pretrain, adapt) seed order
    assert members["lambda-0-seed-0"] == ["lambda-0-seed-0", "lambda-0-seed-1", "lambda-0-seed-2"]
    assert members["l2-seed-0"] == ["l2-seed-0", "l2-seed-1", "l2-seed-2"]
    assert all(len(m) == 1 for name, m in members.items() if name not in ("main", "lambda-0-seed-0", "l2-seed-0"))
    assert len(groups) == 10  # eval-only variants (the utterance bootstrap, min_speakers) are rows of their own
    twin = copy.deepcopy(experiment("lambda-1"))
    _, notes = group_by_seed([experiment("lambda-1"), Experiment("lambda-1-again", "f" * 40, twin.params, twin.metrics)])
    assert notes == ["lambda-1, lambda-1-again: same params and the same training seeds; grouped, but their spread is "
                     "not seed variation"]


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


def test_comparison_pairs_resolve_members_to_their_groups():
    groups = groups_of(RECORDS)
    pairs = comparison_pairs(groups, ["ewc-seed-2=lambda-0-seed-1", "main=l2-seed-2"], "lambda-0-seed-2")
    names = [(a.name, b.name) for a, b in pairs]
    assert names[:2] == [("main", "lambda-0-seed-0"), ("main", "l2-seed-0")]
    assert len(names) == len(groups) - 1 + 1  # the baseline's pairs, main's counted once
    for spec, message in (("nope=main", "--compare nope: no experiment"), ("main", "expected A=B"),
                          ("main=ewc-seed-1", "the same seed group on both sides")):
        with pytest.raises(ResultsError, match=message):
            comparison_pairs(groups, [spec], None)


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


def test_git_predictions_reads_a_commit_and_the_workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *command], check=True)
    path = tmp_path / "reports" / "eval" / "adapted_nl.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("committed\n", encoding="utf-8")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "x"], check=True)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    path.write_text("in the workspace\n", encoding="utf-8")
    read = git_predictions(Path("reports/eval"))
    assert read(Experiment("exp", rev, {}, {}), "adapted_nl.tsv") == "committed\n"
    assert read(Experiment("workspace", "workspace", {}, {}), "adapted_nl.tsv") == "in the workspace\n"
    assert read(Experiment("exp", rev, {}, {}), "pretrained_nl.tsv") is None
