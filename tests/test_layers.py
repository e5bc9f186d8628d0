"""The house's rule: imports point one way (docs/ARCHITECTURE.md).

    edgerec/                 the CLI and the demo, on top
    service/   training/     side by side, never importing each other
    inference/               the shared inference core
    graphprompt/ model_store/  at the bottom, independent of each other
    durable/                 below them: atomic file writes, importing nothing of ours

Every import in every module is checked, lazy ones inside functions included (an AST scan, no import
runs). A package may import itself and any package in a layer below its own; nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {
    "edgerec": 3,
    "service": 2,
    "training": 2,
    "inference": 1,
    "graphprompt": 0,
    "model_store": 0,
    "durable": -1,
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path`` that names one of ours."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in LAYER]
    return found


def wrong_way(package: str) -> list[str]:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target in imports(path):
            if target != package and LAYER[target] >= LAYER[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return problems


@pytest.mark.parametrize("package", sorted(LAYER))
def test_imports_point_down(package):
    assert wrong_way(package) == []


def test_the_scan_sees_lazy_and_wrong_way_imports(tmp_path):
    """The checker itself: a lazy upward import inside a function is caught."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from training.recipe.train import train\n    import service.main\n")
    assert imports(bad) == [(2, "training"), (3, "service")]


def test_every_package_is_placed():
    """A new top-level package must be given a layer here (and on the map in docs/ARCHITECTURE.md)."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "benchmarks"} == set(LAYER)
