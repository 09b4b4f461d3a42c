"""The run key and checkpoint discovery: what defines a run, and which checkpoint a run resumes."""

import dataclasses
from pathlib import Path

import pytest

from forgetting.params import load_params
from forgetting.resume import PROJECT_ROOT, code_files, last_checkpoint, run_config, run_key, stage_run_key

PARAMS = load_params(Path(__file__).resolve().parents[2] / "params.yaml")



def test_run_key_covers_config_and_file_contents(tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("a")
    key = run_key({"lr": 1.0}, [data])
    assert key == run_key({"lr": 1.0}, [data]) and len(key) == 64
    assert key != run_key({"lr": 2.0}, [data])
    data.write_text("b")
    assert key != run_key({"lr": 1.0}, [data])


def test_last_checkpoint_is_the_newest_complete_one(tmp_path):
    for step, complete in ((3, True), (12, True), (15, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-12"
    assert last_checkpoint(tmp_path / "absent") is None


def test_run_config_of_each_stage_holds_its_sections():
    config = run_config(PARAMS, "adapt")
    assert set(config) == {"seed", "data", "adapt"}
    assert config["adapt"]["ewc_lambda"] == PARAMS.adapt.ewc_lambda and config["adapt"]["lr"] == PARAMS.adapt.lr
    assert set(run_config(PARAMS, "pretrain")) == {"seed", "data", "model", "pretrain"}
    with pytest.raises(KeyError, match="no training run is defined for stage 'eval'"):
        run_config(PARAMS, "eval")


@pytest.mark.parametrize(("stage", "section", "change"), [
    ("adapt", "adapt", {"ewc_lambda": 0.5}), ("adapt", "adapt", {"lr": 1e-5}), ("adapt", "data", {"corpus": "cv"}),
    ("pretrain", "pretrain", {"max_steps": 7}), ("pretrain", "model", {"name": "xlsr"}),
])
def test_another_param_gives_another_stage_run_key(tmp_path, stage, section, change):
    data = tmp_path / "train.tsv"
    data.write_text("a")
    other = dataclasses.replace(PARAMS, **{section: dataclasses.replace(getattr(PARAMS, section), **change)})
    assert stage_run_key(PARAMS, stage, [data]) == stage_run_key(PARAMS, stage, [data])
    assert stage_run_key(other, stage, [data]) != stage_run_key(PARAMS, stage, [data])


def test_code_files_are_the_loaded_project_modules():
    files = {p.relative_to(PROJECT_ROOT).as_posix() for p in code_files()}
    assert {"forgetting/resume.py", "forgetting/params.py", "forgetting/io.py"} <= files
    assert all(f.startswith(("forgetting/", "stages/")) for f in files)  # not the tests, not site-packages
