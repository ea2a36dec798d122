"""Where loopwatch's cost of starting and closing a loop goes, counted in CPU instructions.

``loop_start.py`` times the whole; this takes it apart. Each variant is loopwatch installed
with one part switched off after the install (or not installed at all: ``bare``), run in a
child process under valgrind's callgrind, twice: ``--few`` then ``--many`` calls of
``asyncio.run(noop())`` (or ``Runner.run``) after a warm-up. The difference of the two
totals of the calling thread, divided by the difference in calls, is the cost of one call,
with start-up, install and shut-down cancelled out. Instruction counts do not move with the
machine's load, so a part that costs 1 % of a call shows as 1 %. The garbage collector
stays on: what a part costs it counts.

Variants (all but ``bare`` installed with the defaults and a private registry):

* ``full``: everything on.
* ``no-start-hooks``: the hooks run at every loop start cleared (the watchdog's probe).
* ``no-seen-hooks``: the hooks run once per new loop cleared (info metric, watched loops).
* ``no-hooks``: both.
* ``no-select``: the selector's ``select`` wrapper (the stdlib probe) put back.
* ``no-entry-wrappers``: ``asyncio.run``, ``Runner.run``/``close`` and
  ``run_until_complete`` put back (``run_forever`` kept: it runs the start hooks).
* ``no-run-forever``: ``run_forever`` put back (no start hooks run either).
* ``no-exception-handler``: the H4 ``call_exception_handler`` wrapper put back.
* ``no-gc-callback``: the watchdog's garbage-collection timer removed.
* ``no-watchdog``: installed with ``watchdog=False`` (no probe, select wrapper, thread).

Needs valgrind. Run::

    python benchmarks/loop_start_breakdown.py [--loop asyncio|uvloop] [--entry run|runner]
        [--few 50] [--many 350] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import textwrap

import _callgrind  # beside this script

VARIANTS = (
    "bare", "full", "no-start-hooks", "no-seen-hooks", "no-hooks", "no-select",
    "no-entry-wrappers", "no-run-forever", "no-exception-handler", "no-gc-callback",
    "no-watchdog",
)

CHILD = textwrap.dedent('''
    import asyncio, gc, selectors, sys
    import asyncio.base_events as base
    from prometheus_client import CollectorRegistry
    import loopwatch
    from loopwatch import _runtime, _watchdog

    variant, loop, entry, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if loop == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def noop():
        pass

    if entry == "runner":
        def call():
            with asyncio.Runner() as runner:
                runner.run(noop())
    else:
        def call():
            asyncio.run(noop())

    def put_back(owner, name):
        setattr(owner, name, getattr(owner, name).__wrapped__)

    def loop_classes():
        yield base.BaseEventLoop
        if loop == "uvloop":
            yield uvloop.Loop

    if variant != "bare":
        loopwatch.install(registry=CollectorRegistry(), watchdog=variant != "no-watchdog")
        if variant in ("no-start-hooks", "no-hooks"):
            _runtime.loop_start_hooks.clear()
        if variant in ("no-seen-hooks", "no-hooks"):
            _runtime.loop_seen_hooks.clear()
        if variant == "no-select":
            put_back(selectors.DefaultSelector, "select")
        if variant == "no-entry-wrappers":
            put_back(asyncio, "run")
            if sys.version_info >= (3, 11):
                put_back(asyncio.Runner, "run")
                put_back(asyncio.Runner, "close")
            for cls in loop_classes():
                put_back(cls, "run_until_complete")
        if variant == "no-run-forever":
            for cls in loop_classes():
                put_back(cls, "run_forever")
        if variant == "no-exception-handler":
            for cls in loop_classes():
                put_back(cls, "call_exception_handler")
        if variant == "no-gc-callback":
            gc.callbacks.remove(_watchdog._on_gc)
    for _ in range(30):
        call()
    gc.collect()
    for _ in range(calls):
        call()
''')


def main_thread_total(out: str) -> int:
    # --separate-threads: one file per thread, "-01" the main one.
    (path,) = glob.glob(out.replace("%p", "*") + "-01")
    return _callgrind.total(path)


def count(variant: str, loop: str, entry: str, calls: int, tmp: str) -> int:
    script = os.path.join(tmp, "child.py")
    out = os.path.join(tmp, f"cg.{variant}.{calls}.%p")
    subprocess.run(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes",
         f"--callgrind-out-file={out}", sys.executable, script, variant, loop, entry,
         str(calls)],
        check=True, capture_output=True, env=_callgrind.child_env(),
    )
    return main_thread_total(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--entry", choices=("run", "runner"), default="run")
    _callgrind.add_counts(parser, 50, 350, VARIANTS)
    args = parser.parse_args()
    variants = _callgrind.variants(parser, args.variants, VARIANTS)
    if variants is None:
        return 1
    print(f"{args.entry} on {args.loop}, instructions of the calling thread per call "
          f"(({args.many} calls) - ({args.few} calls)) / {args.many - args.few}")
    bare = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "child.py"), "w") as file:
            file.write(CHILD)
        for variant in variants:
            few = count(variant, args.loop, args.entry, args.few, tmp)
            many = count(variant, args.loop, args.entry, args.many, tmp)
            per_call = (many - few) / (args.many - args.few)
            if variant == "bare":
                bare = per_call
            print(f"{variant:<22} {per_call:>10,.0f}  {per_call - bare:>+9,.0f}  "
                  f"{per_call / bare:.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
