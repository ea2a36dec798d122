"""The code examples of README.md and docs/, collected so the suite can run each one.

Rules a page follows (docs/contributing.md says the same for writers):

- A ```` ```python ```` block is a program: it runs in a fresh interpreter, in a scratch
  directory, and must exit 0. A block that needs what an earlier block of the same page
  defined says so with ``<!-- docs: continue -->`` on the line before it: it runs after the
  blocks it continues, in one program.
- A ```` ```text ```` block right after a python block, marked ``<!-- docs: output -->``, is
  what that program prints: compared line by line, where a line ``...`` stands for any
  number of lines and ``...`` inside a line for any text.
- A ```` ```console ```` block holds ``$ command`` lines, each followed by its output (same
  matching). Only ``loopwatch`` and ``python`` commands run; ``$`` lines of other programs
  are shown to readers but not run (a server that must already be up, say).
- A python block whose first line is ``# file: NAME`` is a file, not a program: every later
  example of the same page (``from NAME import ...``, a console block's ``$ python NAME``,
  ``$ loopwatch run -- python NAME``) runs in a directory holding it.
- ``$ pytest ...`` lines run too (as ``python -m pytest``), for the plugin's pages.
- ``<!-- docs: skip REASON -->`` before a block keeps it out, with the reason shown in the
  test report. Used only where running is impossible here (a bot token, a browser).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*docs:\s*(?P<what>\w+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    lang: str
    text: str
    directive: str = ""
    reason: str = ""
    output: Block | None = None
    before: list[Block] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str | None:
        """The name given by a first line ``# file: NAME``, if any."""
        first = self.text.split("\n", 1)[0]
        match = re.match(r"#\s*file:\s*(\S+)\s*$", first)
        return match[1] if match else None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def program(self) -> str:
        """The source to run: the blocks it continues, then its own."""
        return "\n".join([*(b.text for b in self.before), self.text])


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the directive written just before it."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    pending = ("", "")
    while i < len(lines):
        directive = _DIRECTIVE.match(lines[i])
        if directive:
            pending = (directive["what"], directive["arg"])
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                pending = ("", "")
            i += 1
            continue
        indent = len(fence["indent"])
        body: list[str] = []
        start = i + 1
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:])
            i += 1
        i += 1
        found.append(Block(page, start, fence["lang"], "\n".join(body) + "\n", *pending))
        pending = ("", "")
    return found


def examples() -> list[Block]:
    """The runnable examples of every page, outputs attached to their programs."""
    runnable: list[Block] = []
    for page in PAGES:
        previous: list[Block] = []
        last_python: Block | None = None
        files: dict[str, str] = {}
        for block in blocks_of(page):
            if block.lang in ("python", "console"):
                block.files = dict(files)
            if block.lang == "python" and block.file_name:
                files[block.file_name] = block.text
                continue
            if block.lang == "text" and block.directive == "output":
                if last_python is None:
                    raise ValueError(f"{page}:{block.line}: an output block follows no program")
                last_python.output = block
                continue
            if block.lang == "python":
                if block.directive == "continue":
                    block.before = list(previous)
                    previous.append(block)
                else:
                    previous = [block]
                last_python = block
                runnable.append(block)
            elif block.lang == "console":
                runnable.append(block)
    return runnable


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` fits ``expected``, where ``...`` is a wildcard (see the module doc)."""
    pattern = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            parts = [re.escape(p) for p in line.rstrip().split("...")]
            pattern.append(r"[^\n]*?".join(parts) + r"\n")
    text = "".join(a.rstrip() + "\n" for a in actual.rstrip("\n").splitlines())
    return re.fullmatch("".join(pattern), text) is not None


def console_steps(block: Block) -> list[tuple[str, str]]:
    """``(command, expected output)`` pairs of a console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    return [(cmd, "\n".join(out) + "\n" if out else "") for cmd, out in steps]
