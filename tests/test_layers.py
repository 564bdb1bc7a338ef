"""The import graph, read from the source with ``ast``: which package may import which.

Every ``import`` / ``from`` statement counts, top level or inside a function (a lazy
import is as much an arrow as a top-level one); imports under ``if TYPE_CHECKING:``
are annotations only and do not count.

The layers, bottom up::

    config  <-  data  <-  store  <-  teachers  <-  extract, eval
                           ^
                distill ---'   (store, data, config; never teachers)
    demo, cli: anything

"distill never loads a teacher" is this rule: no module of ``mmkd.distill`` imports
``mmkd.teachers``, directly or through another package it may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mmkd"

# leaf modules every package may import: the version, the error base, the JSON value types
BASE = {"mmkd", "mmkd.errors", "mmkd.jsontypes"}
# package -> the mmkd packages it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    "mmkd": set(),
    "mmkd.errors": set(),
    "mmkd.jsontypes": set(),
    "mmkd.config": BASE,
    "mmkd.data": BASE | {"mmkd.config"},
    "mmkd.store": BASE | {"mmkd.config", "mmkd.data"},
    "mmkd.teachers": BASE | {"mmkd.config", "mmkd.data"},
    "mmkd.extract": BASE | {"mmkd.config", "mmkd.data", "mmkd.store", "mmkd.teachers"},
    "mmkd.eval": BASE | {"mmkd.config", "mmkd.data", "mmkd.store", "mmkd.teachers"},
    "mmkd.distill": BASE | {"mmkd.config", "mmkd.data", "mmkd.store"},
    "mmkd.demo": BASE | {"mmkd.config", "mmkd.data", "mmkd.store", "mmkd.teachers", "mmkd.extract",
                         "mmkd.eval", "mmkd.distill"},
    "mmkd.cli": BASE | {"mmkd.config", "mmkd.data", "mmkd.store", "mmkd.teachers", "mmkd.extract",
                        "mmkd.eval", "mmkd.distill", "mmkd.demo"},
}
# entry points: `python -m mmkd.distill` is the `mmkd distill` command
ENTRY_POINTS = {"mmkd.distill.__main__": {"mmkd.cli"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def mmkd_imports(module: str) -> list[tuple[str, ast.AST]]:
    """(imported mmkd module, the statement) for every import of ``module`` outside TYPE_CHECKING."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names = [f"{source}.{a.name}" for a in node.names]
            targets = [n if n in MODULES else source for n in names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for t in targets:
            if t == "mmkd" or t.startswith("mmkd."):
                while t not in MODULES and "." in t:
                    t = t.rsplit(".", 1)[0]
                out.append((t, node))
    return out


def test_every_package_is_in_the_allow_list():
    assert {package_of(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_its_layer_allows(package):
    bad = []
    for module in (m for m in MODULES if package_of(m) == package):
        allowed = ALLOWED[package] | {package} | ENTRY_POINTS.get(module, set())
        bad += [f"{module} imports {t} (line {node.lineno})" for t, node in mmkd_imports(module)
                if package_of(t) not in allowed]
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def test_distill_never_reaches_the_teachers():
    """No chain of imports from mmkd.distill (entry points aside) ends in mmkd.teachers."""
    seen, todo = set(), [m for m in MODULES if package_of(m) == "mmkd.distill" and m not in ENTRY_POINTS]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [t for t, _ in mmkd_imports(m)]
        todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]  # parent __init__s run too
    assert not {m for m in seen if package_of(m) == "mmkd.teachers"}
