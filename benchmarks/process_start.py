"""What loopwatch adds to starting a Python process, and to ``import loopwatch``.

Wall time and CPU time (user + system: far less disturbed by other processes on a shared
machine) of whole interpreter runs, the cases of one round run one after the other and
rounds repeat (``--runs``), so a drift in the machine's load touches every case alike;
median and spread per case, and the median of the per-round differences against its
baseline:

* ``python -c pass`` bare, and in the environment ``loopwatch run`` gives the processes
  it starts (its sitecustomize first on ``PYTHONPATH``): what every Python of a wrapped
  command pays, one that never imports asyncio. Target: at most +10 ms.
* ``python -c "import asyncio"`` bare and under that environment (the install itself).
* the whole ``loopwatch run -- python -c pass`` (the wrapper's own interpreter too), for
  information.
* ``python -c "import asyncio"`` against ``python -c "import loopwatch"``, and against
  ``import loopwatch; loopwatch.install()`` (which imports asyncio and everything the
  guard needs). Target: at most +30 ms over ``import asyncio``.

Run: ``python benchmarks/process_start.py [--runs 40]``; ``python -X importtime -c
"import loopwatch"`` shows where the time of one import goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from loopwatch import cli

PY = sys.executable


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds (user + system) of the process and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ms(values: list[float]) -> str:
    v = sorted(x * 1000 for x in values)
    q = statistics.quantiles(v, n=4)
    return f"median {statistics.median(v):6.1f} ms (p25 {q[0]:.1f}, p75 {q[2]:.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    bare = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    watched = cli.run_environment({}, environ=dict(bare))
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "pass, bare": ([PY, "-c", "pass"], bare),
        "pass, loopwatch run env": ([PY, "-c", "pass"], watched),
        "loopwatch run -- python -c pass": ([PY, "-m", "loopwatch", "run", "--", PY, "-c",
                                             "pass"], bare),
        "import asyncio, bare": ([PY, "-c", "import asyncio"], bare),
        "import asyncio, loopwatch run env": ([PY, "-c", "import asyncio"], watched),
        "import loopwatch, bare": ([PY, "-c", "import loopwatch"], bare),
        "import loopwatch; install()": ([PY, "-c", "import loopwatch; loopwatch.install()"],
                                        bare),
    }
    baseline = {
        "pass, loopwatch run env": "pass, bare",
        "loopwatch run -- python -c pass": "pass, bare",
        "import asyncio, loopwatch run env": "import asyncio, bare",
        "import loopwatch, bare": "import asyncio, bare",
        "import loopwatch; install()": "import asyncio, bare",
    }
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for command, env in cases.values():  # warm the file cache
        timed(command, env)
    for _ in range(args.runs):
        for name, (command, env) in cases.items():
            wall, cpu = timed(command, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"Python {sys.version.split()[0]}, {args.runs} rounds")
    for clock, times in (("wall", walls), ("cpu", cpus)):
        print(f"-- {clock} time")
        for name, values in times.items():
            line = f"{name:<36} {ms(values)}"
            base = baseline.get(name)
            if base is not None:
                diff = [a - b for a, b in zip(values, times[base], strict=True)]
                line += f"  vs {base}: {ms(diff).replace('median ', '+')}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
