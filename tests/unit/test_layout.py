"""The folder tree is the architecture: import directions are checked, not hoped for.

Every import counts, wherever it is written: a function-local import is still a dependency
(it is how the old CLI hid a cycle from readers and from mypy). Rules name folders and
sub-packages by prefix, so a module or sub-package added later is covered without a new rule:
it inherits its folder's direction, the CLI may still import only what is listed for it, and
the cycle check sees it.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The top-level folders that are packages of ours, and what each may import.
ALLOWED = {
    "config": set(),
    "drivers": {"config"},
    "dispatch": {"config"},
    "daemon": {"config", "drivers", "dispatch"},
    "simulators": {"config", "drivers", "dispatch"},
}
# Also part of the cycle check: they import the packages above, and nothing imports them.
CHECKED_FOR_CYCLES = (*ALLOWED, "tests", "bench")

# The CLI is a client of the daemon's socket and of the databases' contracts: it imports
# none of the daemon's runtime (components, supervisor, status server), only these.
CLI = "daemon.cli"
CLI_MAY_IMPORT = (
    "config",
    "drivers",
    "dispatch",
    CLI,
    "daemon.schema",
    "daemon.webschema",
    "daemon.registry",
)
# Modules of the daemon that the CLI shares; they must stay free of the runtime themselves.
SHARED_WITH_CLI = ("daemon.schema", "daemon.webschema", "daemon.registry")


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    where: str  # path:line, for the failure message


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_under(root: Path, folders: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The most specific module of ours that `name` (a dotted import target) denotes."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def edges_of(root: Path, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every import of one of our modules in `path`, at any depth (functions included)."""
    here = module_name(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    targets: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the module pkg.sub when there is one.
            targets += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    out = []
    for target, line in targets:
        resolved = _resolve(target, known)
        if resolved is not None and resolved != here:
            out.append(Edge(here, resolved, f"{path.relative_to(root)}:{line}"))
    return out


def import_graph(root: Path, folders: tuple[str, ...]) -> list[Edge]:
    known = modules_under(root, folders)
    return [edge for path in known.values() for edge in edges_of(root, path, known)]


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected group of modules (Tarjan)."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, []).append(edge)
        graph.setdefault(edge.imported, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.imported not in index:
                visit(edge.imported)
                low[node] = min(low[node], low[edge.imported])
            elif edge.imported in on_stack:
                low[node] = min(low[node], index[edge.imported])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle_in(group, graph) for group in groups]


def _a_cycle_in(group: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    start = min(group)
    path: list[Edge] = []
    seen = {start}
    node = start
    while True:
        edge = next(e for e in graph[node] if e.imported in group)
        path.append(edge)
        if edge.imported in seen:
            first = next(i for i, e in enumerate(path) if e.importer == edge.imported)
            return path[first:]
        seen.add(edge.imported)
        node = edge.imported


def _within(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _describe(cycle: list[Edge]) -> str:
    return " -> ".join(f"{e.importer} ({e.where})" for e in cycle) + f" -> {cycle[-1].imported}"


GRAPH = import_graph(ROOT, CHECKED_FOR_CYCLES)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_import_direction(package: str) -> None:
    offenders = [
        f"{e.where}: {e.imported}"
        for e in GRAPH
        if _within(e.importer, {package}) and not _within(e.imported, ALLOWED[package] | {package})
    ]
    assert not offenders, offenders


def test_no_import_cycle_between_our_modules() -> None:
    found = cycles(GRAPH)
    assert not found, [_describe(c) for c in found]


def test_the_cli_imports_none_of_the_daemons_runtime() -> None:
    offenders = [
        f"{e.where}: {e.imported}"
        for e in GRAPH
        if _within(e.importer, {CLI}) and not _within(e.imported, CLI_MAY_IMPORT)
    ]
    assert not offenders, offenders


def test_what_the_cli_shares_with_the_daemon_imports_no_runtime() -> None:
    offenders = [
        f"{e.where}: {e.imported}"
        for e in GRAPH
        if _within(e.importer, SHARED_WITH_CLI)
        and _within(e.imported, {"daemon"})
        and not _within(e.imported, SHARED_WITH_CLI)
    ]
    assert not offenders, offenders


def test_only_the_cli_its_tests_and_benches_import_the_cli() -> None:
    offenders = [
        f"{e.where}: {e.imported}"
        for e in GRAPH
        if _within(e.imported, {CLI}) and not _within(e.importer, {CLI, "tests", "bench"})
    ]
    assert not offenders, offenders


def test_the_rules_name_modules_that_exist() -> None:
    known = modules_under(ROOT, CHECKED_FOR_CYCLES)
    for name in (CLI, *SHARED_WITH_CLI):
        assert name in known, f"{name} is named by a layout rule but does not exist"


def test_every_package_says_what_it_owns() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for folder in ALLOWED
        for path in sorted((ROOT / folder).rglob("__init__.py"))
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not missing, missing


def test_the_entry_points_load_no_simulator_and_the_cli_no_runtime() -> None:
    """What the AST cannot see (an `importlib` call, a plugin hook) shows in `sys.modules`:
    the daemon and the CLI are imported in a fresh interpreter and what they loaded is read."""
    script = textwrap.dedent(
        """
        import json, sys
        import daemon.cli.main
        cli = sorted(m for m in sys.modules if m.split(".")[0] in {"daemon", "simulators"})
        import daemon.main, daemon.node
        both = sorted(m for m in sys.modules if m.split(".")[0] == "simulators")
        print(json.dumps({"cli": cli, "simulators": both}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout)
    assert loaded["simulators"] == [], loaded["simulators"]
    # The `daemon` package itself is a docstring; its modules beyond these are the runtime.
    runtime = [m for m in loaded["cli"] if m != "daemon" and not _within(m, CLI_MAY_IMPORT)]
    assert runtime == [], runtime


# ---- the rooms inside the daemon and the library ------------------------------------------------
# The two engines are rooms of their own: neither imports the other.
ENGINES = ("daemon.dispatcher", "daemon.spamtest")
# An engine reaches its databases through its seams; only its backends import a driver.
DATABASE_DRIVERS = ("asyncpg", "aiomysql", "redis")
# Who may state SQL on a table (a string constant naming it with a statement keyword):
# its store, and the schema that creates it. Everyone else goes through them.
SQL_OWNERS = {
    "ai_training_logs": {"dispatch.store.training"},
    "campaigns": {"dispatch.store"},
    "campaign_runs": {"dispatch.store.web"},
    "hanjullo.runs": {"dispatch.store"},
    "hanjullo.run_recipients": {"dispatch.store"},
    # The training metrics read a company's latest verdicts of a text (spam_blocked); the
    # web's result rows are written from the node's (dispatch/spamtests/web.py).
    "hanjullo.spam_tests": {
        "dispatch.spamtests.store",
        "dispatch.spamtests.web",
        "dispatch.store.training",
    },
    "hanjullo.spam_test_results": {
        "dispatch.spamtests.store",
        "dispatch.spamtests.web",
        "dispatch.store.training",
    },
    "spam_filter_tests": {"dispatch.spamtests.web", "dispatch.store.training"},
    "spam_filter_test_results": {"dispatch.spamtests.web", "dispatch.store.training"},
    "spam_filter_devices": {"dispatch.spamtests.web", "dispatch.spamtests.devices"},
    "hanjullo.modem_receipts": {"dispatch.spamtests.store", "dispatch.spamtests.receipts"},
}
SCHEMA = "daemon.schema"
_STATEMENT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")


def test_the_engines_do_not_import_each_other() -> None:
    offenders = [
        f"{e.where}: {e.imported}"
        for e in GRAPH
        for engine in ENGINES
        if _within(e.importer, {engine}) and _within(e.imported, set(ENGINES) - {engine})
    ]
    assert not offenders, offenders


def _third_party_imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("engine", ENGINES)
def test_only_an_engines_backends_import_a_database_driver(engine: str) -> None:
    folder = ROOT / engine.replace(".", "/")
    assert folder.is_dir(), f"{engine} is named by a layout rule but does not exist"
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted(folder.rglob("*.py"))
        if path.name != "backends.py"
        for name, line in _third_party_imports(path)
        if name in DATABASE_DRIVERS
    ]
    assert not offenders, offenders


def sql_constants(path: Path) -> list[tuple[str, int]]:
    """String constants holding a statement (docstrings left out), with their lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _STATEMENT.search(node.value)
    ]


def test_every_table_has_its_sql_in_its_store_only() -> None:
    offenders = []
    for name, path in modules_under(ROOT, tuple(ALLOWED)).items():
        if name == SCHEMA:
            continue
        for text, line in sql_constants(path):
            for table, owners in SQL_OWNERS.items():
                if re.search(rf"\b{table}\b", text) and not _within(name, owners):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {table}")
    assert not offenders, offenders


def test_the_sql_rule_sees_statements_and_not_docstrings(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "m.py": '''
                """Owns nothing; mentions UPDATE ai_training_logs only in prose."""
                def f():
                    """SELECT * FROM ai_training_logs, in a docstring."""
                    return "UPDATE ai_training_logs SET x = 1"
                ''',
        },
    )
    found = sql_constants(tmp_path / "m.py")
    assert [(text, line) for text, line in found] == [("UPDATE ai_training_logs SET x = 1", 5)]


def test_one_rule_says_an_agent_is_down() -> None:
    """`daemon.agents.agent_is_down` is the rule; nobody else reads its states."""
    offenders = [
        f"{path.relative_to(ROOT)}"
        for name, path in modules_under(ROOT, tuple(ALLOWED)).items()
        if name != "daemon.agents" and "DOWN_STATES" in path.read_text(encoding="utf-8")
    ]
    assert not offenders, offenders


# ---- the checker itself ------------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_cycle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    # The shape the old CLI had: the entry module registers the others from inside a
    # function, and they reach back to it from inside theirs.
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": '"""p"""',
            "pkg/ctl.py": "def ext():\n    from pkg import ctl_runs\n",
            "pkg/ctl_runs.py": "def _ctl():\n    from pkg import ctl\n    return ctl\n",
            "pkg/ok.py": "import pkg.ctl_runs\n",
        },
    )
    found = cycles(import_graph(tmp_path, ("pkg",)))
    assert [sorted({e.importer for e in c}) for c in found] == [["pkg.ctl", "pkg.ctl_runs"]]
    assert "pkg/ctl.py:2" in _describe(found[0])


def test_relative_and_dotted_imports_are_resolved(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": "from . import b\nfrom ..c import thing\n",
            "pkg/sub/b.py": "import pkg.sub.a as again\n",
            "pkg/c.py": "thing = 1\n",
        },
    )
    edges = {(e.importer, e.imported) for e in import_graph(tmp_path, ("pkg",))}
    assert edges == {
        ("pkg.sub.a", "pkg.sub.b"),
        ("pkg.sub.a", "pkg.c"),
        ("pkg.sub.b", "pkg.sub.a"),
    }
    assert len(cycles(import_graph(tmp_path, ("pkg",)))) == 1
