"""Real PyPI libraries whose sync API starts a loop, called in real kernels (see real_libraries).

For each case: without help it fails; where nest_asyncio or nest-asyncio2 make it work,
loopwatch's default does too (a second call included), every note it shows is true of the
cell, and the kernel is usable afterwards (a trivial cell, an interrupt, a plain await).
The table in the README comes from ``benchmarks/nested_libraries.py`` over the same cases.
"""

from __future__ import annotations

import pytest
from real_libraries import CASES, Case, available, run_case

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_library_call_in_a_kernel(case: Case) -> None:
    if not available(case):
        pytest.skip(f"{case.module} is not installed")
    bare = run_case(case, "bare")
    assert bare.first != "ok", f"{case.name} works without help: not a nested-run case"
    assert bare.usable == "ok", bare

    others = {mode: run_case(case, mode) for mode in ("nest_asyncio", "nest_asyncio2")}
    ours = run_case(case, "loopwatch default")
    assert ours.note_problems == [], ours.note_problems
    assert ours.usable == "ok", ours
    # uvicorn's Runner (3.11) / loop_factory (3.12+) defeat nest_asyncio; loopwatch must not fail
    if any(outcome.works for outcome in others.values()) or case.module == "uvicorn":
        assert ours.works, (ours, others)
        assert ours.notes, "a nested run that worked without a note"
        worked = ("result: returned", "result: stopped by")
        assert all(any(w in note for w in worked) for note in ours.notes), ours.notes
    else:
        # Nothing makes this one work in a kernel (anyio refuses to start inside a running
        # loop before any loop is touched): loopwatch must not make it worse.
        assert ours.works or ours.first == bare.first, (ours, bare)
