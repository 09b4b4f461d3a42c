"""The library's shape: a few cross-cutting modules at the top and five wings, whose imports run downward only (read
from the code with `ast`, imports inside functions included), so a later change cannot quietly tie them in a knot."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "forgetting"
TOP = {"curves", "errors", "io", "layout", "machine", "params", "schema"}  # the cross-cutting few, at the top of the package
# what each part may import, besides itself ("" is the top of the package)
MAY_IMPORT = {
    "": set(),
    "data": {""},
    "demo": {"", "data"},
    "training": {"", "data"},
    "methods": {"", "data", "training"},
    "evaluation": {"", "data"},
}


def part_of(module: str) -> str:
    """The wing of `forgetting.<wing>` and of its modules, or "" for the package and a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else ""


def project_imports(path: Path) -> set[str]:
    """The project modules (`forgetting.*`, `stages.*`) that the file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "forgetting" else [f"forgetting.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("forgetting", "stages")}
    return found


def library_modules() -> dict[str, Path]:
    """Every module of the library by dotted name (a package by its `__init__`)."""
    modules = {}
    for path in LIBRARY.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_the_library_is_the_top_modules_and_the_wings():
    top = {p.stem for p in LIBRARY.glob("*.py")} - {"__init__"}
    wings = {p.name for p in LIBRARY.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert top == TOP, "a new top-level module: put it in a wing, or add it to the cross-cutting few on purpose"
    assert wings == set(MAY_IMPORT) - {""}


@pytest.mark.parametrize("wing", sorted(set(MAY_IMPORT) - {""}))
def test_each_wing_says_what_it_is_for_and_what_it_may_import(wing):
    docstring = ast.get_docstring(ast.parse((LIBRARY / wing / "__init__.py").read_text(encoding="utf-8")))
    assert docstring is not None and 2 <= len(docstring.splitlines()) <= 5, wing
    assert "may import" in docstring, wing


@pytest.mark.parametrize("module", sorted(library_modules()))
def test_imports_run_downward_only(module):
    own = part_of(module)
    allowed = MAY_IMPORT[own] | {own}
    for imported in project_imports(library_modules()[module]):
        assert not imported.startswith("stages"), f"{module} imports the stage {imported}"
        assert imported != "forgetting", f"{module} imports the package itself"
        assert part_of(imported) in allowed, f"{module} ({own or 'top'}) imports {imported} ({part_of(imported) or 'top'})"


def test_the_rule_check_sees_a_wrong_way_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from forgetting.training.model import build_model\n    import stages.cli\n")
    assert project_imports(bad) == {"forgetting.training.model", "stages.cli"}
    assert part_of("forgetting.training.model") == "training" not in MAY_IMPORT["evaluation"]
