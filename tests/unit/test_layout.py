"""The folder tree is the architecture: import directions are checked, not hoped for."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"config", "daemon", "drivers", "dispatch", "simulators"}
ALLOWED = {
    "config": set(),
    "drivers": {"config"},
    "dispatch": {"config"},
    "daemon": {"config", "drivers", "dispatch"},
    "simulators": {"config", "drivers", "dispatch"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imports_of(path) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders


def test_only_tests_benches_and_demo_import_simulators() -> None:
    for package in OURS - {"simulators"}:
        for path in (ROOT / package).rglob("*.py"):
            assert "simulators" not in imports_of(path), path
