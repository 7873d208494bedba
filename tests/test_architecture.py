"""The shape of the package, read from the source with ``ast``: imports flow one way, private names stay home.

An edge goes from a module to each rnnlab module an ``import`` statement in it names (``import a.b``
and ``from a import b`` with ``b`` a module name ``a.b``; ``from a.b import name`` names ``a.b``).
Every statement counts, also those inside functions: a lazy import still ties two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "rnnlab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from X import ...`` in ``module`` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """``(target module, names imported from it that are not modules, line)`` for every rnnlab import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "rnnlab"]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node)
            if target.split(".")[0] != "rnnlab":
                continue
            names = []
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.append((f"{target}.{alias.name}", [], node.lineno))
                else:
                    names.append(alias.name)
            if names:
                found.append((target, names, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    """module -> the rnnlab modules its import statements name."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            assert target in MODULES, f"{module} imports {target}, which does not exist"
            graph[module].add(target)
    graph = {m: targets - {m} for m, targets in graph.items()}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_known_imports():
    graph = _graph()
    assert "rnnlab.rundir" in graph["rnnlab.train.runner"]
    assert "rnnlab.data.streaming" in graph["rnnlab.data.encoding"]  # a lazy or top-level import counts
    assert (
        "rnnlab.train.runner" in graph["rnnlab.experiments.plan"] and "rnnlab.train" not in graph["rnnlab.train.runner"]
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_rnnlab_modules():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("rnnlab.errors", "rnnlab."),
        ("rnnlab.rundir", "rnnlab.train"),
        ("rnnlab.rundir", "rnnlab.report"),
        ("rnnlab.rundir", "rnnlab.experiments"),
        ("rnnlab.report", "rnnlab.train"),
        ("rnnlab.report", "rnnlab.experiments"),
        ("rnnlab.report", "rnnlab.data"),
        ("rnnlab.train", "rnnlab.experiments"),
        ("rnnlab.train", "rnnlab.report"),
        ("rnnlab.report", "rnnlab.models"),
        ("rnnlab.rundir", "rnnlab.data"),
        ("rnnlab._io", "rnnlab."),
        ("rnnlab.train", "rnnlab.cli"),
        ("rnnlab.data", "rnnlab.train"),
        ("rnnlab.data", "rnnlab.models"),
        ("rnnlab.data", "rnnlab.rundir"),
        ("rnnlab.nn", "rnnlab.data"),
        ("rnnlab.models", "rnnlab.train"),
        ("rnnlab.models", "rnnlab.data"),
        ("rnnlab.explain", "rnnlab.cli"),
        ("rnnlab.explain", "rnnlab.experiments"),
    ],
)
def test_imports_flow_one_way(lower, upper):
    """No module of ``lower`` imports (even lazily) a module of ``upper``."""
    graph = _graph()
    wrong = sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m == lower or m.startswith(lower + ".")
        for t in targets
        if t.startswith(upper) and not (t == lower or t.startswith(lower + "."))
    )
    assert wrong == []


def test_only_the_cli_imports_the_explain_package():
    """rnnlab.explain sits on top (it reads runs through train, models, nn, data and rundir); only
    the command line reaches it."""
    graph = _graph()
    importers = sorted(
        m
        for m, targets in graph.items()
        if not m.startswith("rnnlab.explain")
        for t in targets
        if t == "rnnlab.explain" or t.startswith("rnnlab.explain.")
    )
    assert importers == ["rnnlab.cli"]


def _private_module_violations(module: str, target: str) -> list[str]:
    """A private module (``pkg._mod``) may be imported by the modules of its own package only."""
    parts = target.split(".")
    bad = []
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if not (module == owner or module.startswith(owner + ".")):
                bad.append(f"{module} imports the private module {target}")
    return bad


def test_no_private_names_imported_across_modules():
    problems = []
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        aliases = {}  # local name -> rnnlab module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, node)
                aliases.update(
                    {(a.asname or a.name): f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
                )
        for target, names, line in _imports(module):
            problems += _private_module_violations(module, target)
            problems += [
                f"{module}:{line} imports the private name {target}.{n}"
                for n in names
                if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))
            ]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                problems.append(f"{module}:{node.lineno} uses the private name {aliases[node.value.id]}.{node.attr}")
    assert problems == []


def test_the_checks_catch_a_private_import_and_a_private_module():
    assert _private_module_violations("rnnlab.train.runner", "rnnlab.data._cache") == [
        "rnnlab.train.runner imports the private module rnnlab.data._cache"
    ]
    assert _private_module_violations("rnnlab.data.encoding", "rnnlab.data._cache") == []
    assert _private_module_violations("rnnlab.report.build", "rnnlab._io") == []
