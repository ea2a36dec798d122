"""Real libraries whose sync API starts a loop, called in a real kernel: who makes them work.

For every case of ``tests/real_libraries.py`` and every mode (bare, nest_asyncio,
nest-asyncio2, loopwatch with each policy) a fresh ipykernel of *this* interpreter runs the
case twice, then a trivial cell and an interrupted cell. Prints a Markdown table (one row
per case) and the longest call, and writes the raw outcomes as JSON when asked.

Run: ``python benchmarks/nested_libraries.py [--modes bare,loopwatch default] [--json out.json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from real_libraries import CASES, MODES, Outcome, available, run_case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    parser.add_argument("--cases", default="", help="only cases whose name contains this")
    parser.add_argument("--json", default="", help="write the outcomes to this file")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    cases = [c for c in CASES if args.cases.lower() in c.name.lower() and available(c)]
    outcomes: list[Outcome] = []
    started = time.monotonic()
    for case in cases:
        for mode in modes:
            outcome = run_case(case, mode)
            outcomes.append(outcome)
            print(
                f"# {case.name} | {mode}: {outcome.cell()} ({outcome.seconds:.1f}s)"
                + (f" untrue notes: {len(outcome.note_problems)}" if outcome.note_problems else ""),
                file=sys.stderr,
                flush=True,
            )
    version = ".".join(map(str, sys.version_info[:2]))
    print(f"\nPython {version}, {len(cases)} cases, {time.monotonic() - started:.0f}s\n")
    print("| case | " + " | ".join(modes) + " |")
    print("|---" * (len(modes) + 1) + "|")
    for case in cases:
        row = [o for o in outcomes if o.case == case.name]
        print(f"| {case.name} | " + " | ".join(o.cell() for o in row) + " |")
    print("\n| works | " + " | ".join(
        f"{sum(o.works for o in outcomes if o.mode == m)}/{len(cases)}" for m in modes
    ) + " |")
    for mode in modes:
        worst = max((o for o in outcomes if o.mode == mode), key=lambda o: o.seconds)
        print(f"longest call under {mode}: {worst.seconds:.1f}s ({worst.case})")
    problems = [(o.case, o.mode, p) for o in outcomes for p in o.note_problems]
    print(f"untrue notes: {len(problems)}")
    for problem in problems:
        print("  ", str(problem)[:300])
    if args.json:
        Path(args.json).write_text(
            json.dumps([dataclasses.asdict(o) for o in outcomes], indent=1)
        )


if __name__ == "__main__":
    main()
