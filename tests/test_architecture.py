"""The shape of the package: data flows adapters -> core -> sinks, with no circle.

These read the source (no import side effects): the import graph of ``loopwatch/`` is
acyclic, the core imports no adapter, private attributes of other packages are touched
only in ``loopwatch/_compat/``, and only the metrics sink and the lag probe write the
incident metrics.
"""

from __future__ import annotations

import ast
import re
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


PRIVATE = re.compile(
    r"\b(_current_tasks|_warn_unawaited_coroutine|_asyncio_future_blocking|"
    r"effective_route_context|_labelnames|_labelvalues|_enter_task|_leave_task|"
    r"_set_running_loop|_get_running_loop|_current_frames|_run_once|_names_to_collectors|"
    r"_nest_patched|_upper_bounds|get_referents|_fut_waiter)\b"
)


def _docstring_lines(source: str) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def test_private_attributes_of_other_packages_only_in_compat() -> None:
    offenders = []
    for name, path in modules().items():
        if name.startswith("loopwatch._compat"):
            continue
        source = path.read_text(encoding="utf-8")
        prose = _docstring_lines(source)
        for number, line in enumerate(source.splitlines(), 1):
            code = line.split("#", 1)[0]
            if number not in prose and PRIVATE.search(code):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert offenders == []


INCIDENT_METRICS = (
    "reentry_total", "reentry_stall_seconds", "event_loop_blocks_total",
    "event_loop_blocked_seconds_total", "task_exceptions_unretrieved_total",
    "coroutines_never_awaited_total", "internal_errors_total", "stuck_handlers_total",
)


def test_only_the_metrics_sink_writes_incident_metrics() -> None:
    pattern = re.compile(r"\.(" + "|".join(INCIDENT_METRICS) + r")\b")
    writers = sorted(
        name for name, path in modules().items()
        if pattern.search(path.read_text(encoding="utf-8"))
    )
    assert writers == ["loopwatch.metrics"]
