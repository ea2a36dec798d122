"""A library's own event loop, run nested on the thread whose loop is running.

A sync API that creates and runs a loop of its own (a server's ``run()``, a sync client
that keeps a private loop) fails inside a running loop only because asyncio refuses to
start a second loop on a thread that runs one. :func:`run_on_this_thread` lets it run here,
as if no loop were running, and puts back exactly what a script would never notice it
changed: the running loop and its current task, the loop ``set_event_loop`` set for this
thread, the main thread's signal handlers and wake-up fd.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._compat import asyncio as _aio
from ._stalls import STALL_LINE_AFTER

if TYPE_CHECKING:
    from ._stalls import Stall

__all__ = ["run_on_this_thread"]


class _Signals:
    """The main thread's signal handlers and wake-up fd, to put back after a nested loop."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {}
        self.wakeup = -1
        self.saved = False

    def save(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can change them
        for sig in signal.valid_signals():
            try:
                self.handlers[sig] = signal.getsignal(sig)
            except (OSError, ValueError):
                continue
        self.wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(self.wakeup)
        self.saved = True

    def restore(self) -> None:
        if not self.saved:
            return
        for sig, handler in self.handlers.items():
            if handler is None or signal.getsignal(sig) is handler:
                continue
            try:
                signal.signal(sig, handler)
            except (OSError, ValueError, TypeError):
                continue
        try:  # whatever the nested loop left points at its own, closed, self-pipe
            signal.set_wakeup_fd(self.wakeup)
        except (OSError, ValueError):
            signal.set_wakeup_fd(-1)


def run_on_this_thread(
    running: asyncio.AbstractEventLoop, run: Callable[[], Any], stall: Stall | None = None
) -> Any:
    """Run ``run`` (which runs another loop) here, as if no loop were running, then restore.

    What a library's own loop may change and a script would never notice is put back: the
    running loop and its current task, the loop ``set_event_loop`` set for this thread, the
    signal handlers and the wake-up fd (servers install their own). ``stall``, the open
    record of this wait, says so in a line once it has held the running loop a second.
    """
    task = asyncio.current_task(running)
    known, thread_loop = _aio.policy_loop()
    signals = _Signals()
    signals.save()
    if task is not None:
        _aio.leave_task(running, task)  # 3.14 keeps one current task per thread
    if stall is not None:
        stall.say_after(
            STALL_LINE_AFTER,
            "has run its own event loop on this thread for {waited:.1f}s; the running loop "
            "waits until it returns",
        )
    _aio.set_running_loop(None)
    try:
        return run()
    finally:
        _aio.set_running_loop(running)
        if task is not None and asyncio.current_task(running) is not task:
            _aio.enter_task(running, task)
        if known:
            _aio.set_policy_loop(thread_loop)
        signals.restore()
