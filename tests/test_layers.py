"""The import graph: ``mmkd.data`` and ``mmkd.store`` sit at the bottom; no stage reaches into another's data code.

Read from the source (every ``import`` / ``from`` statement, top level or inside a
function), so a lazy import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mmkd"
STAGES = ("mmkd.extract", "mmkd.distill", "mmkd.eval", "mmkd.demo", "mmkd.cli")


def imports_of(package: str) -> dict[str, set[str]]:
    """module file -> the mmkd modules it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted((PKG / package.split(".", 1)[1]).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[str(path.relative_to(PKG.parent))] = {n for n in names if n == "mmkd" or n.startswith("mmkd.")}
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("mmkd.data", STAGES + ("mmkd.store",)),
    ("mmkd.store", STAGES),
])
def test_bottom_layers_import_no_stage(package, forbidden):
    bad = {f: sorted(m for m in mods if m.startswith(forbidden)) for f, mods in imports_of(package).items()}
    bad = {f: m for f, m in bad.items() if m}
    assert not bad, f"{package} must not import a stage (or, for data, the store): {bad}"


def test_no_stage_imports_another_stages_data_code():
    """Reading datasets goes through mmkd.data: no module imports the old extract readers or images."""
    for package in ("mmkd.distill", "mmkd.eval", "mmkd.store", "mmkd.extract"):
        for f, mods in imports_of(package).items():
            assert not {m for m in mods if m.startswith(("mmkd.extract.readers", "mmkd.extract.images"))}, f
