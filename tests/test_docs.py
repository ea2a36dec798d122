"""Every code example of README.md and docs/ runs, and shows what it prints.

The examples are collected by ``docs_harness`` (its docstring and docs/contributing.md say
how a page marks them up); the reference pages are compared with what the code renders.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import docs_harness
import docs_reference
import pytest

ROOT = docs_harness.ROOT
TIMEOUT = 120


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOPWATCH_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    # `python` inside a command (`loopwatch run -- python app.py`) is this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # stdout and stderr share one pipe: unbuffered, lines arrive in the order they were
    # written (buffered, a log line on stderr could land inside a printed line).
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "100"
    return env


def _command(line: str) -> list[str] | None:
    """The argv of a ``$`` line, or None for a program the page only shows."""
    argv = shlex.split(line)
    if argv[0] == "loopwatch":
        return [sys.executable, "-m", "loopwatch", *argv[1:]]
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if argv[0] == "pytest":
        return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *argv[1:]]
    return None


class Output(str):
    """What a program printed: stdout and stderr as one text, and each apart.

    Threads of a program (a test client's, a server's) write to both while it prints, and a
    line written in two parts can be split by another's: a page's output matches the
    text of stderr then stdout, stdout alone, or stdout then stderr.
    """

    stdout: str
    stderr: str
    status: int

    def readings(self) -> list[str]:
        return [self.stderr + self.stdout, self.stdout, self.stdout + self.stderr]


def _run(argv: list[str], cwd: Path) -> Output:
    result = subprocess.run(
        argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    out = Output(f"{result.stderr}{result.stdout}")
    out.stdout, out.stderr, out.status = result.stdout, result.stderr, result.returncode
    return out


def _check(expected: str, actual: Output, where: str) -> None:
    assert any(docs_harness.matches(expected, text) for text in actual.readings()), (
        f"{where}: the page shows\n{expected}\nbut the example printed\n{actual}"
    )


EXAMPLES = docs_harness.examples()


@pytest.mark.parametrize("block", EXAMPLES, ids=[b.id for b in EXAMPLES])
def test_example(block: docs_harness.Block, tmp_path: Path) -> None:
    if block.directive == "skip":
        pytest.skip(block.reason or "marked skip")
    for name, text in block.files.items():
        (tmp_path / name).write_text(text)
    if block.lang == "python":
        (tmp_path / "example.py").write_text(block.program())
        out = _run([sys.executable, "example.py"], tmp_path)
        assert out.status == 0, f"{block.id} failed:\n{out}"
        if block.output is not None:
            _check(block.output.text, out, block.id)
        return
    ran = 0
    for line, expected in docs_harness.console_steps(block):
        argv = _command(line)
        if argv is None:
            continue
        ran += 1
        out = _run(argv, tmp_path)
        if expected:
            _check(expected, out, f"{block.id}: $ {line}")
        else:
            assert out.status == 0, f"{block.id}: $ {line} failed:\n{out}"
    assert ran, f"{block.id}: a console block with nothing to run (mark it skip, or make it text)"


@pytest.mark.parametrize("name", sorted(docs_reference.PAGES))
def test_reference_page_is_what_the_code_renders(name: str) -> None:
    committed = (docs_reference.OUT / name).read_text()
    assert committed == docs_reference.PAGES[name](), (
        f"docs/reference/{name} is stale: run `python tests/docs_reference.py`"
    )


def test_reference_tables_hold_every_value_the_code_accepts() -> None:
    from loopwatch._config import OPTIONS, POLICIES
    from loopwatch._incidents import KINDS

    config = (docs_reference.OUT / "configuration.md").read_text()
    for option in OPTIONS.values():
        assert f"`{option.name}`" in config
    for policy in POLICIES:
        assert policy in config
    kinds = (docs_reference.OUT / "incidents.md").read_text()
    for kind in KINDS:
        assert f"`{kind}`" in kinds
    metric_page = (docs_reference.OUT / "metrics.md").read_text()
    for name, *_ in docs_reference.metric_rows():
        assert f"`{name}`" in metric_page


def test_every_page_is_in_the_site() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python/name:", ""))
    listed: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, str):
            listed.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config["nav"])
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages - listed == set(), "pages missing from mkdocs.yml's nav"


def test_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < 12_000, len(readme)
    text = readme.decode()
    # The two quick-start commands (CI runs the second) and the three-step user path.
    for needed in ("python3 dev.py demo", "python3 dev.py test", "pip install 'loopwatch[fastapi]'",
                   "instrument(app)"):
        assert needed in text, needed
