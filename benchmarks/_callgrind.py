"""What the callgrind benchmarks share: their variant arguments and reading a total.

``loop_start_breakdown.py`` and ``asgi_instructions.py`` each run a child script under
valgrind's callgrind once per variant and count, so they parse and check their variants
the same way (``bare`` always first: the other rows are read against it).
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence


def add_counts(parser: argparse.ArgumentParser, few: int, many: int,
               known: Sequence[str]) -> None:
    """``--few``/``--many`` (the two run lengths whose difference is counted) and variants."""
    parser.add_argument("--few", type=int, default=few)
    parser.add_argument("--many", type=int, default=many)
    parser.add_argument("variants", nargs="*", default=list(known))


def variants(parser: argparse.ArgumentParser, asked: Sequence[str], known: Sequence[str]
             ) -> list[str] | None:
    """The variants to run, ``bare`` first; ``None`` (and a line said) without valgrind."""
    unknown = set(asked) - set(known)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if shutil.which("valgrind") is None:
        print("needs valgrind")
        return None
    return list(asked) if "bare" in asked else ["bare", *asked]


def total(path: str) -> int:
    """The instruction total of one callgrind output file."""
    with open(path) as file:
        for line in file:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def child_env() -> dict[str, str]:
    """The environment of a counted child: one fixed hash seed.

    With a random seed per process, the same tree's count moves by a few thousand
    instructions between runs (dictionary layouts differ); with one seed it repeats to
    within a few hundred.
    """
    return {**os.environ, "PYTHONHASHSEED": "0"}
