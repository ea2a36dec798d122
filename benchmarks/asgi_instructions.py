"""CPU instructions per request of ``LoopwatchMiddleware`` alone, counted by callgrind.

``asgi_overhead.py --alone`` times the middleware around an app that only sets
``scope["route"]`` and answers; on a shared machine its medians move by a few tenths of a
microsecond from run to run, as much as a change to the middleware does. This counts the
same requests in instructions, which the machine's load does not move: each variant runs in
a child process under valgrind's callgrind twice, ``--few`` then ``--many`` in-process
requests after a warm-up, the collector off; the difference of the two totals divided by
the difference in requests is one request. Variants: the bare app, the middleware with its
defaults, and with ``handler_metrics=True`` (a registry of its own).

To compare two trees, run it once per tree with the other checkout first on
``PYTHONPATH``. Needs valgrind. Run::

    python benchmarks/asgi_instructions.py [--few 1000] [--many 6000] [VARIANT ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

import _callgrind  # beside this script

VARIANTS = ("bare", "default", "handler_metrics")

CHILD = textwrap.dedent('''
    import asyncio, gc, sys
    from prometheus_client import CollectorRegistry
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from loopwatch.adapters.asgi import LoopwatchMiddleware

    variant, count = sys.argv[1], int(sys.argv[2])

    async def endpoint(request):
        return PlainTextResponse("ok")

    route = Route("/items/{item_id}", endpoint)
    start = {"type": "http.response.start", "status": 200, "headers": []}
    body = {"type": "http.response.body", "body": b"ok"}

    async def app(scope, receive, send):
        scope["route"] = route  # what Starlette's router leaves in the scope
        await send(start)
        await send(body)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    if variant == "default":
        app = LoopwatchMiddleware(app, framework="starlette")
    elif variant == "handler_metrics":
        app = LoopwatchMiddleware(app, framework="starlette", handler_metrics=True,
                                  registry=CollectorRegistry())
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/items/42", "raw_path": b"/items/42", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000), "state": {},
    }

    async def main():
        copy = scope.copy
        for _ in range(300):
            await app(copy(), receive, send)
        gc.disable()
        for _ in range(count):
            await app(copy(), receive, send)

    asyncio.run(main())
''')


def count(variant: str, requests: int, tmp: str) -> int:
    out = os.path.join(tmp, f"cg.{variant}.{requests}")
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
         os.path.join(tmp, "child.py"), variant, str(requests)],
        check=True, capture_output=True, env=_callgrind.child_env(),
    )
    return _callgrind.total(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _callgrind.add_counts(parser, 1000, 6000, VARIANTS)
    args = parser.parse_args()
    variants = _callgrind.variants(parser, args.variants, VARIANTS)
    if variants is None:
        return 1
    print(f"instructions per request (({args.many}) - ({args.few})) / {args.many - args.few}")
    bare = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "child.py"), "w") as file:
            file.write(CHILD)
        for variant in variants:
            per_request = (count(variant, args.many, tmp) - count(variant, args.few, tmp)) / (
                args.many - args.few
            )
            if variant == "bare":
                bare = per_request
            print(f"{variant:<16} {per_request:>8,.0f}  {per_request - bare:>+8,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
