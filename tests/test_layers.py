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

Two more rules: no import cycle between modules (a lazy import closes a cycle as well
as a top-level one), and an import of an mmkd module sits at the top of its file,
except the few places in :data:`LOCAL_IMPORTS`, each there for a reason a user feels.
A package's lazy re-exports (``_LAZY`` in its ``__init__``: name -> module) are
arrows too: they count as imports of those modules.
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

# The function-local imports of mmkd modules outside mmkd.cli (the CLI imports each
# command's modules when the command runs, so `mmkd --help` stays fast): (module, imported
# module) -> why the import waits for the call.
LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("mmkd.extract.runners.run", "mmkd.extract.runners.ray_runner"):
        "ray (~1 s, a cluster connection) only for --runner ray",
    ("mmkd.extract.runners.block", "mmkd.teachers.loaders"):
        "torch/open_clip/transformers load in the worker; the Ray driver imports this module to start its actors",
    ("mmkd.eval.encoders", "mmkd.teachers.loaders"):
        "torch/open_clip only when a teacher is run; features read from a store need neither",
}


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


def _lazy_table(tree: ast.Module) -> ast.Assign | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return node
    return None


def lazy_exports(module: str) -> set[str]:
    """The modules a package's ``_LAZY`` table (name -> module) names: its lazy re-exports."""
    node = _lazy_table(ast.parse(MODULES[module].read_text()))
    if node is None:
        return set()
    return {n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and n.value.startswith("mmkd.")}


def mmkd_imports(module: str, tree: ast.Module | None = None, lazy: bool = True) -> list[tuple[str, ast.AST]]:
    """(imported mmkd module, the statement) for every import of ``module`` outside TYPE_CHECKING.

    A package's ``_LAZY`` re-exports count as imports too (the statement: the table), unless
    ``lazy`` is false: importing the package does not run them.
    """
    path = MODULES[module]
    tree = tree or ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    table = _lazy_table(tree)
    out = [(t, table) for t in sorted(lazy_exports(module))] if lazy else []
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


def reached_from(start: list[str]) -> set[str]:
    """Every module that importing ``start`` can run (parent package ``__init__``s included; their
    ``_LAZY`` re-exports load only when used, and a use is an import of its own)."""
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [t for t, _ in mmkd_imports(m, lazy=False)]
        todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]  # parent __init__s run too
    return seen


def test_distill_never_reaches_the_teachers():
    """No chain of imports from mmkd.distill (entry points aside) ends in mmkd.teachers."""
    seen = reached_from([m for m in MODULES if package_of(m) == "mmkd.distill" and m not in ENTRY_POINTS])
    assert not {m for m in seen if package_of(m) == "mmkd.teachers"}


def test_the_demos_student_processes_never_reach_the_teachers():
    """mmkd.demo.students is all a demo student's (spawned) process imports: no teacher either."""
    assert not {m for m in reached_from(["mmkd.demo.students"]) if package_of(m) == "mmkd.teachers"}


def test_lazy_tables_name_modules_of_their_own_package():
    bad = [f"{m}: {t}" for m in MODULES for t in lazy_exports(m)
           if t not in MODULES or package_of(t) != package_of(m)]
    assert not bad, "a _LAZY table may name only modules of its own package:\n" + "\n".join(bad)


def function_local_imports() -> list[tuple[str, str, int]]:
    """(module, imported mmkd module, line) for each import statement inside a function, mmkd.cli aside."""
    out = []
    for module in MODULES:
        if package_of(module) == "mmkd.cli":
            continue
        tree = ast.parse(MODULES[module].read_text())
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for target, node in mmkd_imports(module, tree):
            if id(node) in inside:
                out.append((module, target, node.lineno))
    return out


def test_mmkd_imports_sit_at_the_top_of_the_file():
    """An import of an mmkd module inside a function hides an arrow of the design; the few that
    buy something a user feels are listed, with why, in LOCAL_IMPORTS."""
    found = function_local_imports()
    bad = [f"{m} line {line}: imports {t} inside a function" for m, t, line in found if (m, t) not in LOCAL_IMPORTS]
    assert not bad, ("move these imports to the top of the file, or, when the import must wait (torch, ray, "
                     "open_clip out of `mmkd --help` or the Ray driver), add them to LOCAL_IMPORTS with the "
                     "reason:\n" + "\n".join(bad))
    stale = set(LOCAL_IMPORTS) - {(m, t) for m, t, _ in found}
    assert not stale, f"LOCAL_IMPORTS lists imports that are no longer inside a function: {sorted(stale)}"


def import_graph() -> dict[str, set[str]]:
    """module -> the mmkd modules it imports (top level or inside functions, TYPE_CHECKING aside)."""
    return {m: {t for t, _ in mmkd_imports(m) if t != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    """No two modules import each other, directly or round a longer loop, counting imports inside
    functions (a lazy import closes a cycle just the same); TYPE_CHECKING imports aside."""
    found = cycles(import_graph())
    assert not found, "import cycles (break each by moving the shared part into a leaf module):\n" + "\n".join(
        " -> ".join(c) for c in found)
