"""The shape of the package: data flows adapters -> core -> sinks, with no circle.

These read the source (no import side effects): the import graph of ``loopwatch/`` is
acyclic, the core imports no adapter, private attributes of other packages are touched
only in ``loopwatch/_compat/``, and only the metrics sink and the lag probe write the
incident metrics.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

PACKAGE = Path(__file__).resolve().parent.parent / "loopwatch"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for p in PACKAGE.rglob("*.py") if "_sitecustomize" not in p.parts
    }


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The loopwatch modules ``name`` imports at run time (module level or in functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    # A package's __init__ importing its own submodules is not a dependency of theirs on it.
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_has_no_cycle() -> None:
    edges = graph()
    assert edges.get("loopwatch._monitor")
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_imports_no_adapter() -> None:
    edges = graph()
    for name, targets in edges.items():
        if name.startswith(("loopwatch.adapters", "loopwatch.demo", "loopwatch.cli")):
            continue
        adapters = {t for t in targets if t.startswith("loopwatch.adapters")}
        if name == "loopwatch":
            # ``%load_ext loopwatch`` looks the hooks up on the package: they import the
            # IPython adapter when IPython calls them, never at import time.
            adapters -= {"loopwatch.adapters", "loopwatch.adapters.ipython"}
        assert not adapters, f"{name} imports {adapters}"


def test_the_runtime_module_is_a_leaf() -> None:
    edges = graph()
    assert edges["loopwatch._runtime"] <= {"loopwatch._logging", "loopwatch._frames"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def own_names() -> set[str]:
    """Every name loopwatch itself defines: functions, classes, variables, attributes, slots."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                names.update(
                    c.value for c in ast.walk(node.value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
            elif isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("loopwatch")
            ):
                # A name imported from loopwatch's own modules (under an alias, maybe).
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def foreign_private_uses(source: str, own: set[str]) -> list[tuple[int, str]]:
    """Private names of other packages that ``source`` touches, by line.

    Found by the syntax tree, not by a list of names: ``x._name`` (or ``getattr(x,
    "_name")``) where loopwatch defines no ``_name``; any private attribute of a module
    imported from another package (``sys._getframe``); ``from pkg import _name``.
    """
    tree = ast.parse(source)
    foreign_modules: set[str] = set()
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("loopwatch"):
                    foreign_modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and not (
            node.module or ""
        ).startswith("loopwatch"):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in foreign_modules:
                found.append((node.lineno, f"{base.id}.{node.attr}"))
            elif node.attr not in own:
                found.append((node.lineno, f"._{node.attr[1:]}"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
    return sorted(found)


def test_the_private_attribute_rule_finds_what_it_should() -> None:
    own = {"_mine"}
    source = (
        "import sys\nimport asyncio as aio\nfrom asyncio import _get_running_loop\n"
        "def f(loop, self):\n"
        "    self._mine = 1\n"
        "    loop._ready.clear()\n"
        "    sys._getframe(1)\n"
        "    aio._mine\n"
        "    getattr(loop, '_selector', None)\n"
        "    getattr(loop, '_mine', None)\n"
        "    loop.__class__\n"
    )
    assert [line for line, _ in foreign_private_uses(source, own)] == [3, 6, 7, 8, 9]


def test_private_attributes_of_other_packages_only_in_compat() -> None:
    own = own_names()
    offenders = []
    for name, path in modules().items():
        if name.startswith("loopwatch._compat"):
            continue
        for line, what in foreign_private_uses(path.read_text(encoding="utf-8"), own):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert offenders == []


def _metrics_class() -> ast.ClassDef:
    tree = ast.parse((PACKAGE / "metrics.py").read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Metrics")


def metric_attributes() -> set[str]:
    """The metrics :class:`Metrics` defines: ``self.NAME = _make(...)`` in its ``__init__``."""
    init = next(n for n in _metrics_class().body if isinstance(n, ast.FunctionDef)
                and n.name == "__init__")
    return {
        target.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name) and node.value.func.id == "_make"
        for target in node.targets if isinstance(target, ast.Attribute)
    }


def incident_metrics() -> set[str]:
    """The metrics counted from incidents: those ``incident_samples`` names (what
    ``Metrics.record`` and the pending metrics both write)."""
    tree = ast.parse((PACKAGE / "_pending_metrics.py").read_text(encoding="utf-8"))
    samples = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                   and n.name == "incident_samples")
    return {
        node.value for node in ast.walk(samples)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    } & metric_attributes()


# The sink: the metrics, and the pending metrics that stand for them until
# prometheus_client is imported.
SINK = {"loopwatch.metrics", "loopwatch._pending_metrics"}


def metric_users() -> dict[str, set[str]]:
    """Modules (other than ``metrics``) that touch each metric attribute of ``Metrics``."""
    metrics = metric_attributes()
    users: dict[str, set[str]] = {}
    for name, path in modules().items():
        if name in SINK:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in metrics:
                users.setdefault(node.attr, set()).add(name)
    return users


def test_incident_metrics_are_written_by_the_sink_and_lag_by_the_probe() -> None:
    incident = incident_metrics()
    assert {"reentry_total", "event_loop_blocks_total", "coroutines_never_awaited_total"} <= (
        incident
    )
    users = metric_users()
    # Every incident is counted by Metrics.record, nowhere else.
    assert {m: users[m] for m in incident if m in users} == {}
    # The lag histogram is the one metric the core writes outside the sink (hot path).
    assert users.get("event_loop_lag_seconds", set()) <= {"loopwatch._watchdog", "loopwatch._probe"}
    # Other metrics written outside the sink belong to adapters (a handler's duration,
    # the discord latency), never to the core.
    for metric, modules_ in users.items():
        if metric == "event_loop_lag_seconds":
            continue
        assert all(m.startswith("loopwatch.adapters.") for m in modules_), (metric, modules_)
