"""The run key and checkpoint discovery: what defines a run, and which checkpoint a run resumes."""

import dataclasses
import importlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from forgetting.params import load_params
from forgetting.schema import CommonVoiceSource
from forgetting.training.resume import (
    PROJECT_ROOT,
    checkpoint_problem,
    code_files,
    last_checkpoint,
    run_config,
    run_key,
    stage_run_key,
)

PARAMS = load_params(Path(__file__).resolve().parents[3] / "params.yaml")



def test_run_key_covers_config_and_file_contents(tmp_path):
    data = tmp_path / "train.tsv"
    data.write_text("a")
    key = run_key({"lr": 1.0}, [data])
    assert key == run_key({"lr": 1.0}, [data]) and len(key) == 64
    assert key != run_key({"lr": 2.0}, [data])
    data.write_text("b")
    assert key != run_key({"lr": 1.0}, [data])


def write_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder with the files the Trainer writes, each complete."""
    folder.mkdir(parents=True)
    save_file({"w": torch.ones(3)}, folder / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"step": step}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "curves" / "train").mkdir(parents=True)
    return folder


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_last_checkpoint_is_the_newest_complete_one(tmp_path):
    for step in (3, 12):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-12"
    assert last_checkpoint(tmp_path / "absent") is None
    (tmp_path / "checkpoint-15").mkdir()  # a save that had only begun
    (tmp_path / "not-a-checkpoint").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-12"


def test_a_checkpoint_of_several_processes_holds_one_rng_state_each(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-3", 3)
    for rank in (0, 1):  # what the Trainer saves under torchrun
        shutil.copy(checkpoint / "rng_state.pth", checkpoint / f"rng_state_{rank}.pth")
    (checkpoint / "rng_state.pth").unlink()
    assert checkpoint_problem(checkpoint) is None
    cut(checkpoint / "rng_state_1.pth", 100)
    assert checkpoint_problem(checkpoint) == "rng_state_1.pth is missing or cut"


def test_a_lora_checkpoint_holds_adapters_and_resumes(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-3", 3)
    (checkpoint / "model.safetensors").rename(checkpoint / "adapter_model.safetensors")  # what peft saves
    assert checkpoint_problem(checkpoint) is None
    cut(checkpoint / "adapter_model.safetensors", 40)
    assert "adapter_model.safetensors:" in checkpoint_problem(checkpoint)


@pytest.mark.parametrize(("damage", "problem"), [
    (lambda c: cut(c / "trainer_state.json", 10), "trainer_state.json is not a complete trainer state"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "holds step 3, the folder's name says 12"),
    (lambda c: cut(c / "model.safetensors", 40), "model.safetensors:"),
    (lambda c: cut(c / "optimizer.pt", 100), "optimizer.pt is missing or cut"),
    (lambda c: (c / "rng_state.pth").unlink(), "rng_state.pth is missing or cut"),
    (lambda c: shutil.rmtree(c / "curves"), "no curves/ (the copy of the curves is written after the checkpoint)"),
])
def test_a_half_written_checkpoint_is_passed_over_with_its_name(tmp_path, caplog, damage, problem):
    write_checkpoint(tmp_path / "checkpoint-3", 3)
    newest = write_checkpoint(tmp_path / "checkpoint-12", 12)
    damage(newest)
    assert problem in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="forgetting.training.resume"):
        assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
    assert f"{newest} is incomplete, not resumed from: " in caplog.text and problem in caplog.text


def test_run_config_of_each_stage_holds_its_sections():
    config = run_config(PARAMS, "adapt")
    assert set(config) == {"seed", "resources", "data", "adapt"}
    assert config["adapt"]["ewc_lambda"] == PARAMS.adapt.ewc_lambda and config["adapt"]["lr"] == PARAMS.adapt.lr
    assert set(run_config(PARAMS, "pretrain")) == {"seed", "resources", "data", "model", "pretrain"}
    with pytest.raises(KeyError, match="no training run is defined for stage 'eval'"):
        run_config(PARAMS, "eval")


@pytest.mark.parametrize(("stage", "section", "change"), [
    ("adapt", "adapt", {"ewc_lambda": 0.5}), ("adapt", "adapt", {"lr": 1e-5}), ("adapt", "adapt", {"seed": 1}),
    ("adapt", "data", {"common_voice": {"nl": CommonVoiceSource("cv/nl"), "de": CommonVoiceSource("cv/de")}}),
    ("adapt", "resources", {"nproc_per_node": 2}),
    ("pretrain", "pretrain", {"max_steps": 7}), ("pretrain", "model", {"name": "xlsr"}),
])
def test_another_param_gives_another_stage_run_key(tmp_path, stage, section, change):
    data = tmp_path / "train.tsv"
    data.write_text("a")
    other = dataclasses.replace(PARAMS, **{section: dataclasses.replace(getattr(PARAMS, section), **change)})
    assert stage_run_key(PARAMS, stage, [data]) == stage_run_key(PARAMS, stage, [data])
    assert stage_run_key(other, stage, [data]) != stage_run_key(PARAMS, stage, [data])


def test_code_files_are_the_loaded_project_modules():
    importlib.import_module("stages.adapt")  # a stage module is code the run executes, like the library
    files = {p.relative_to(PROJECT_ROOT).as_posix() for p in code_files()}
    assert "stages/adapt.py" in files
    assert {"forgetting/training/resume.py", "forgetting/params.py", "forgetting/io.py"} <= files
    assert all(f.startswith(("forgetting/", "stages/")) for f in files)  # not the tests, not site-packages
