"""CPU instructions per request of a FastAPI service, bare and with loopwatch, counted
by valgrind's callgrind: the same figure on a busy machine as on an idle one.

Throughput on a shared 2-CPU machine moves by ±15 % between rounds (see ``load.py``),
far more than the few percent loopwatch costs, so this counts instead. Each variant is
served by real uvicorn (``--loop uvloop``) on 127.0.0.1 under ``valgrind --tool=callgrind``
twice, answering ``--few`` and then ``--many`` ``GET /health`` requests from 8 keep-alive
connections (a client process outside valgrind); the difference of the two totals divided
by the difference in requests is the cost of one request, with start-up and shut-down
cancelled out. The collector is disabled in the server (``gc.disable()``), so this is
the code path alone: ``gc_pressure.py`` measures the collections. loopwatch's lag tick is
set to 1 s here, so that its per-second work (which valgrind's slowness would multiply)
does not count as per-request cost. Needs valgrind (Debian package ``valgrind``). Run::

    python benchmarks/instructions.py [--few 400] [--many 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
VARIANTS = {
    "bare": "",
    "instrument(app)": "instrument(app)",
    "instrument(app, handler_metrics=True)": "instrument(app, handler_metrics=True)",
}

SERVER = textwrap.dedent('''
    import gc, sys
    gc.disable()
    import uvicorn
    from fastapi import FastAPI
    from loopwatch.adapters.fastapi import instrument

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    {setup}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop",
                log_level="warning", access_log=False)
''')

CLIENT = textwrap.dedent('''
    import http.client, sys, threading, time
    port, count = int(sys.argv[1]), int(sys.argv[2])
    deadline = time.monotonic() + 300
    while True:  # wait for the server (slow under valgrind)
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            probe.request("GET", "/health")
            probe.getresponse().read()
            probe.close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    def worker(n):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(n):
            connection.request("GET", "/health")
            response = connection.getresponse()
            assert response.status == 200, response.status
            response.read()
    threads = [threading.Thread(target=worker, args=(count // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def count_instructions(setup: str, requests: int, workdir: Path) -> int:
    """Instructions valgrind counted for a whole server run that answered ``requests``."""
    port = free_port()
    script = workdir / f"server_{port}.py"
    script.write_text(SERVER.replace("{setup}", setup))
    out = workdir / f"callgrind_{port}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPWATCH_")}
    env["LOOPWATCH_LAG_TICK"] = "1"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         str(script), str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        # The first (probe) request counts too: requests + 1 for every variant alike.
        subprocess.run([sys.executable, "-c", CLIENT, str(port), str(requests)],
                       check=True, timeout=900)
    finally:
        server.send_signal(2)  # SIGINT: uvicorn shuts down and valgrind writes its file
        _, err = server.communicate(timeout=300)
    found = re.search(r"^totals:\s+(\d+)", out.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no callgrind totals; valgrind said:\n{err[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--few", type=int, default=400)
    parser.add_argument("--many", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.many <= args.few or args.few % 8 or args.many % 8:
        parser.error("--many must exceed --few; both multiples of 8")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loopwatch-instr-") as tmp, \
            ThreadPoolExecutor(args.jobs) as pool:
        jobs = {
            (name, n): pool.submit(count_instructions, setup, n, Path(tmp))
            for name, setup in VARIANTS.items() for n in (args.few, args.many)
        }
        totals = {key: job.result() for key, job in jobs.items()}
    print(f"Python {sys.version.split()[0]}, uvicorn --loop uvloop, FastAPI GET /health, "
          f"callgrind; ({args.many} − {args.few}) requests per variant, "
          f"{time.monotonic() - started:.0f} s\n")
    print("| variant | instructions per request | vs bare |")
    print("|---|---:|---:|")
    per = {name: (totals[name, args.many] - totals[name, args.few]) / (args.many - args.few)
           for name in VARIANTS}
    for name, value in per.items():
        ratio = value / per["bare"] - 1
        print(f"| {name} | {value / 1000:,.1f} k | {'—' if name == 'bare' else f'{ratio:+.1%}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
