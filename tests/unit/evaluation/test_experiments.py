"""Experiments from a real `dvc exp show --json`: parsing, selection, seed groups, the pairs a report compares, and
where predictions are read from."""

import copy
import json
import subprocess
from pathlib import Path

import pytest

from forgetting.evaluation.experiments import (
    Experiment,
    Group,
    ResultsError,
    comparison_pairs,
    git_files,
    group_by_seed,
    machine_notes,
    parse_exp_show,
    read_machines,
    select_experiments,
)
from forgetting.evaluation.render import ORDER_KEYS
from tests.unit.exp_show import METRICS, RECORDS, experiment, experiment_record, groups_of


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


def test_git_files_reads_a_commit_and_the_workspace(tmp_path, monkeypatch):
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
    read = git_files(Path("reports/eval"))
    assert read(Experiment("exp", rev, {}, {}), "adapted_nl.tsv") == "committed\n"
    assert read(Experiment("workspace", "workspace", {}, {}), "adapted_nl.tsv") == "in the workspace\n"
    assert read(Experiment("exp", rev, {}, {}), "pretrained_nl.tsv") is None


def provenance_reader(records: dict[str, list[dict]]):
    """A PredictionSource over in-memory provenance records: experiment name -> one record per file."""
    def read(experiment, file):
        found = records.get(experiment.name, [])
        index = int(file.removeprefix("stage").removesuffix(".json"))
        return json.dumps(found[index]) if index < len(found) else None
    return read


def test_machine_notes_name_the_machines_and_warn_on_a_mix():
    cpu = {"machine": "Xeon 8480 (AMX)", "mode": "reproducible"}
    epyc = {"machine": "EPYC 9654 (AVX-512)", "mode": "reproducible"}
    experiments = {name: Experiment(name, name, {"adapt": {"seed": i}}, {}) for i, name in enumerate("abcd")}
    read = provenance_reader({"a": [cpu, cpu], "b": [cpu, epyc], "c": [epyc | {"mode": "unpinned"}], "d": []})
    machines = {name: read_machines(e, read, ["stage0.json", "stage1.json"]) for name, e in experiments.items()}
    assert machines["a"] == {("Xeon 8480 (AMX)", "reproducible")}
    assert machines["b"] == {("Xeon 8480 (AMX)", "reproducible"), ("EPYC 9654 (AVX-512)", "reproducible")}
    a, b, c, d = (Group((experiments[n],)) for n in "abcd")
    notes = machine_notes([a, b, c, d], [(a, c), (a, d), (a, b)], machines)
    assert notes[0] == ("Computed on: Xeon 8480 (AMX), reproducible: a, b; EPYC 9654 (AVX-512), reproducible: b; "
                        "EPYC 9654 (AVX-512), unpinned: c; no provenance recorded: d.")
    assert notes[1].startswith("Warning: row b mixes machines (EPYC 9654 (AVX-512), reproducible; Xeon 8480 (AMX), "
                               "reproducible): the mode is meant to give the same bytes")
    assert notes[2].startswith("Warning: comparison a - c mixes modes (EPYC 9654 (AVX-512), unpinned; Xeon 8480 (AMX), "
                               "reproducible): the machine acts as one more seed")
    assert notes[3] == ("Warning: comparison a - d: no provenance for d (run before it was recorded), so whether its "
                        "numbers share the others' machine is unknown.")
    assert notes[4].startswith("Warning: comparison a - b mixes machines") and len(notes) == 5


def test_a_broken_provenance_record_is_refused_naming_it():
    read = provenance_reader({"a": [{"mode": "reproducible"}]})
    with pytest.raises(ResultsError, match=r"^a: stage0.json is not a provenance record"):
        read_machines(Experiment("a", "a", {}, {}), read, ["stage0.json"])
