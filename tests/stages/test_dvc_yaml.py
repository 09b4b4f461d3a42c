"""`dvc.yaml` is honest: each stage depends on exactly the project code it runs, and names only the curves, the
languages and the params sections the library defines."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from forgetting.curves import CURVES
from forgetting.layout import LANGUAGES
from forgetting.training.resume import RUN_PARAMS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("forgetting", "stages")
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))


def module_file(name: str) -> Path | None:
    """The source file of a project module (`forgetting.x`, `stages.y`, a package's `__init__`), or None."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(module: str) -> set[Path]:
    """The project files `module` executes: itself, the packages it lies in, and every project module it imports,
    directly or transitively (read from the code with `ast`, including imports inside functions)."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    pending += [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    pending.append(node.module)
                    pending += [f"{node.module}.{alias.name}" for alias in node.names]  # `from stages import cli`
    return seen


def stage_modules(cmd: str) -> list[str]:
    """The project modules a stage's command runs: `python -m stages.x`, or the launcher and the stage it starts
    (`python -m stages.launch N stages.x`)."""
    return re.findall(r"\bstages\.\w+", cmd)


def test_the_launcher_and_its_stage_are_both_followed():
    assert stage_modules("python -m stages.launch ${resources.nproc_per_node} stages.adapt --model m") == [
        "stages.launch", "stages.adapt"]


def stage_specs() -> dict[str, dict]:
    """Each stage's definition (a foreach stage's `do`)."""
    return {name: spec.get("do", spec) for name, spec in DVC_YAML["stages"].items()}


@pytest.mark.parametrize("stage", sorted(stage_specs()))
def test_stage_deps_are_exactly_the_code_it_imports(stage):
    spec = stage_specs()[stage]
    entries = stage_modules(spec["cmd"])
    declared = {ROOT / dep for dep in spec["deps"] if dep.endswith(".py")}
    imported = set().union(*(imported_files(entry) for entry in entries))
    assert sorted(p.relative_to(ROOT).as_posix() for p in imported - declared) == [], "missing from deps"
    assert sorted(p.relative_to(ROOT).as_posix() for p in declared - imported) == [], "stale in deps"


def test_the_import_scan_sees_through_packages_and_function_imports():
    files = {p.relative_to(ROOT).as_posix() for p in imported_files("stages.vocab")}
    assert {"stages/vocab.py", "stages/__init__.py", "stages/cli.py", "forgetting/__init__.py", "forgetting/data/corpus.py",
            "forgetting/io.py"} <= files
    assert "forgetting/training/trainer.py" not in files


def test_foreach_stages_loop_over_the_languages():
    assert tuple(DVC_YAML["stages"]["validate"]["foreach"]) == LANGUAGES
    # a language's sample stage is the one of its source: its params group, which holds every language once
    assert DVC_YAML["stages"]["sample"]["foreach"] == "${data.common_voice}"
    assert DVC_YAML["stages"]["sample_official"]["foreach"] == "${data.common_voice_official}"
    assert DVC_YAML["stages"]["sample_hf"]["foreach"] == "${data.datasets}"


def test_training_stages_depend_on_the_params_their_run_key_covers():
    for stage, sections in RUN_PARAMS.items():
        declared = {entry.split(".")[0] for entry in DVC_YAML["stages"][stage]["params"]}
        assert declared == set(sections), stage


def test_plots_name_only_curves_the_library_defines():
    named = set()
    for plot in DVC_YAML["plots"]:
        for spec in plot.values() if isinstance(plot, dict) else []:
            for file in spec.get("y", {}):
                match = re.fullmatch(r"reports/\w+/plots/metrics/(.+)\.tsv", file)
                if match:
                    named.add(match.group(1))
                    assert spec["y"][file] == match.group(1).rsplit("/", 1)[-1], file
    assert named and named <= set(CURVES)
