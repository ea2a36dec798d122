"""What to do with one nested run, and the pieces that make each choice honest.

:func:`route` picks, for one intercepted call, where it runs:

==========================  ==============================  =================================
call                        loop                            ``auto`` does
==========================  ==============================  =================================
asyncio.run / Runner.run /  stdlib, in a kernel             re-enter the running loop
run_until_complete of the   stdlib, in a service            offload to a worker thread
running loop                uvloop (any)                    offload to a worker thread
a Task/Future of the        stdlib, in a kernel             re-enter (it is that loop's)
running loop                otherwise                       fail at once, naming the object
run_until_complete /        any (a library's own loop)      run it nested on this thread,
run_forever of another,                                     then restore the running loop
idle loop
==========================  ==============================  =================================

``offload`` always offloads (a library's own loop included), ``reenter`` re-enters where it
can and runs a library's own loop nested on this thread, ``raise`` lets the error through.

Each route is carried out elsewhere: :mod:`._offload` (a worker thread),
:mod:`._ownloop` (a library's own loop on this thread), :mod:`._nested` (re-entry). What
the notes and hints say about a call (the library it went through, the one fix, how it
ended) is here.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ._frames import Frame, is_user_file
from ._stalls import REENTERED

__all__ = [
    "Route",
    "advice_for",
    "describe_outcome",
    "in_kernel",
    "library_of",
    "route",
]
# The async API to use instead of a library's sync wrapper, by top-level package.
_ADVICE = {
    "uvicorn": "`await server.serve()` (server = uvicorn.Server(uvicorn.Config(app, ...)))",
    "hypercorn": "`await hypercorn.asyncio.serve(app, config)`",
    "aiohttp": "`runner = web.AppRunner(app); await runner.setup(); "
    "await web.TCPSite(runner, host, port).start()`",
    "quart": "`await app.run_task(host, port)`",
    "pydantic_ai": "`await agent.run(...)` instead of `agent.run_sync(...)`",
    "pydantic_graph": "`await agent.run(...)` instead of `agent.run_sync(...)`",
    "asyncclick": "`await command.main(args, standalone_mode=False)`",
    "telegram": "`async with application: await application.start(); "
    "await application.updater.start_polling()`",
    "discord": "`await client.start(token)`",
    "nextcord": "`await client.start(token)`",
    "disnake": "`await client.start(token)`",
}


class Route:
    """Where one nested call runs."""

    REENTER = REENTERED  # on the running loop, re-entrantly (it keeps running)
    NESTED = "nested"  # a library's own loop, run on this thread
    OFFLOAD = "offloaded"  # on a worker thread, with a loop of its own
    REJECT = "rejected"  # a Future of the running loop that cannot run here: fail at once
    RAISE = "raised"  # the original RuntimeError


def route(
    policy: str,
    *,
    awaitable: Any,
    target: asyncio.AbstractEventLoop | None,
    running: asyncio.AbstractEventLoop,
    can_reenter: bool,
    in_kernel: bool,
) -> tuple[str, str]:
    """The route for a call and, when it is a fallback, why (``""`` otherwise)."""
    if policy == "raise":
        return Route.RAISE, ""
    own_loop = target is not None and target is not running
    if own_loop and policy != "offload":
        return Route.NESTED, ""
    reenter_wanted = policy == "reenter" or (policy == "auto" and in_kernel)
    if asyncio.isfuture(awaitable) and awaitable.get_loop() is running:
        if reenter_wanted and can_reenter and not own_loop:
            return Route.REENTER, ""
        return Route.REJECT, ""
    if own_loop:
        return Route.OFFLOAD, ""
    if reenter_wanted:
        if can_reenter:
            return Route.REENTER, ""
        kind = f"{type(running).__module__}.{type(running).__name__}"
        return Route.OFFLOAD, f"reenter is not possible on {kind}; offloaded instead"
    return Route.OFFLOAD, ""


# -- what the notes say ---------------------------------------------------------------------


def library_of(stack: list[Frame] | tuple[Frame, ...]) -> str | None:
    """The top-level package of the library the user called (the frame just inside theirs)."""
    previous: Frame | None = None
    for frame in stack:  # innermost first
        if is_user_file(frame.file):
            break
        previous = frame
    else:
        return None
    if previous is None:
        return None
    path = os.path.normcase(previous.file)
    for marker in ("site-packages", "dist-packages"):
        _, sep, tail = path.partition(os.sep + marker + os.sep)
        if sep:
            return tail.split(os.sep, 1)[0].removesuffix(".py") or None
    return None


def advice_for(api: str, library: str | None) -> str:
    """The one change that removes this nested run from the user's code."""
    if library is not None:
        known = _ADVICE.get(library)
        if known is not None:
            return f"use {library}'s async API: {known}"
        return f"use {library}'s async API from async code, or call it from a plain script"
    coroutine = "the coroutine" if api != "loop.run_forever" else "the work"
    return f"make the caller async and `await` {coroutine} instead of calling {api}()"


def describe_outcome(exc: BaseException | None) -> str:
    """``returned`` or ``failed with <type>: <message>`` (shortened), for notes and logs."""
    if exc is None:
        return "returned"
    if not isinstance(exc, Exception):
        # SystemExit, KeyboardInterrupt: how servers stop their own loop (aiohttp's
        # GracefulExit); the library usually handles it, so it is not called a failure here.
        return f"stopped by {type(exc).__name__}"
    text = " ".join(str(exc).split())
    if len(text) > 100:
        text = text[:99] + "…"
    name = type(exc).__name__
    return f"failed with {name}: {text}" if text else f"failed with {name}"


def in_kernel(framework: str) -> bool:
    """Whether the call comes from a notebook cell (the IPython extension labels them)."""
    return framework == "jupyter"
