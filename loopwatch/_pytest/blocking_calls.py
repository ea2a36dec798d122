"""Blocking calls on the event-loop thread, for test suites only (the pytest plugin).

The watchdog sees a block by its length; a test wants more: a ``time.sleep(0.001)`` in an
``async def`` is a bug even when it is short, because in production the same call waits
longer. Under the pytest plugin, and never in a production install, this module wraps the
calls that block by nature and reports each one made while an event loop is running on the
calling thread, with the call site. The call itself then runs unchanged: loopwatch
observes, the test fails through the plugin.

Which calls count is decided by their origin (:mod:`loopwatch._pytest.scope`): walking the
stack outwards from the call, the first frame that is not a library's must be the code
under test. A test body that accepts on its own listening socket, or a conftest that sleeps,
is the test's own scaffolding and does not count; a sync client called by the app does,
reported at the app's line.

The categories, each can be switched off:

``sleep``
    ``time.sleep(secs)`` with ``secs > 0``. Nothing in asyncio or uvloop sleeps on the loop
    thread, so every call is the caller's.
``socket``
    The I/O methods of ``socket.socket`` and ``ssl.SSLSocket`` (``connect``, ``accept``,
    ``recv*``, ``send*``, TLS ``read``/``write``/``do_handshake``) on a socket in *blocking*
    mode (``gettimeout() != 0.0``, so a socket with a timeout counts too). An event loop
    only ever drives non-blocking sockets, so its own I/O never matches, and every sync
    network client (``http.client``, ``urllib``, ``requests``, httpx's sync transport, a
    sync database driver) does. ``connect`` on a datagram socket does not count: it only
    records the peer address and never waits.
``file``
    Opening a file for reading (``open``/``io.open``, ``pathlib.Path.open``/``read_text``/
    ``read_bytes``) when the *direct* caller is the code under test. Reads that libraries
    make for themselves (``mimetypes`` loading its tables, a package's data files,
    ``linecache``) and every write (log handlers write on the loop thread in most services)
    are left alone: they are short, bounded and not the user's to fix. Imports do not go
    through ``open``.

Not covered, on purpose: DNS lookups (``socket.getaddrinfo`` is also used for cheap
address parsing), thread joins, locks and queues (the watchdog reports a long wait on
them as a blocked loop), subprocesses, and names bound before the session started
(``from time import sleep`` in a module imported before pytest configured the plugin).

Every wrapper checks, in this order, that it is enabled, that the call can block, and that
an event loop runs on this thread (``asyncio.get_running_loop()``); a call that fails a
check costs a few attribute reads. Judging the origin is dictionary look-ups per frame: the
wrappers make no call that could block (no ``stat``, ``abspath``, ``realpath``), so the
plugin runs beside blockbuster and inside its checks. :func:`install` returns the undo,
which puts back the identical original objects (a method that was inherited is deleted
again).
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import io
import pathlib
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Collection
from typing import Any

from .._compat import cpython
from .._patching import Patches

__all__ = ["CATEGORIES", "KIND", "Reporter", "install"]

KIND = "blocking_call"
CATEGORIES = ("sleep", "socket", "file")

# judge(caller, direct): the frame to report the call at when a blocking call made by
# ``caller`` (the wrapper's caller) counts, else None. ``direct``: only the caller itself
# may make it count (file reads that libraries make for themselves are theirs).
Judge = Callable[[types.FrameType, bool], "types.FrameType | None"]
# reporter(api, hint, detail, caller, site): called on the loop thread, inside the call.
Reporter = Callable[[str, str, dict[str, str], types.FrameType, types.FrameType], None]

_HINTS = {
    "sleep": (
        "time.sleep() stops every task on the event loop for its whole duration. Use "
        "`await asyncio.sleep(...)` (or `await anyio.sleep(...)`)."
    ),
    "socket": (
        "A blocking-mode socket call on the event-loop thread (a sync HTTP client, database "
        "driver or SDK) waits for the network with the whole loop stopped. Use an async "
        "client (httpx.AsyncClient, aiohttp, asyncio streams), or run the sync call with "
        "`await asyncio.to_thread(...)`."
    ),
    "file": (
        "A file read on the event-loop thread stops every task until the disk answers (a "
        "network filesystem can take seconds). Read it before the loop starts, or with "
        "`await asyncio.to_thread(path.read_bytes)` (anyio.Path and aiofiles do the same)."
    ),
}

_SOCKET_METHODS = (
    "connect", "connect_ex", "accept", "recv", "recv_into", "recvfrom", "recvfrom_into",
    "recvmsg", "recvmsg_into", "send", "sendall", "sendto", "sendmsg",
)
_SSL_METHODS = (
    "connect", "accept", "do_handshake", "read", "write", "recv", "recv_into", "recvfrom",
    "recvfrom_into", "send", "sendall", "sendto",
)
_WRITE_MODES = frozenset("wax+")

_local = threading.local()
_reporter: Reporter | None = None
_judge: Judge = lambda caller, direct: None  # noqa: E731


def _loop_running_here() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _report(category: str, api: str, detail: dict[str, str], direct: bool = False) -> bool:
    """Hand one blocking call to the reporter if its origin counts; never raises.

    Called by a wrapper: the frame two up is the code that made the call.
    """
    reporter = _reporter
    if reporter is None:
        return False
    # A wrapper reached again while reporting (the log handler, a nested wrapped call such
    # as SSLSocket.recv -> read) must not report again.
    _local.busy = True
    try:
        caller = cpython.getframe(2)
        site = _judge(caller, direct)
        if site is None:
            return False
        reporter(api, _HINTS[category], detail, caller, site)
        return True
    except Exception as exc:
        from .._monitor import internal_error

        internal_error("blocking", exc)
        return False
    finally:
        _local.busy = False


def _busy() -> bool:
    return getattr(_local, "busy", False) is True


def _quietly(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a call that was just reported: what it calls inside is not reported again."""
    _local.busy = True
    try:
        return original(*args, **kwargs)
    finally:
        _local.busy = False


# -- wrappers ------------------------------------------------------------------------------


def _wrap_sleep(original: Callable[[float], None]) -> Callable[[float], None]:
    @functools.wraps(original)
    def sleep(secs: float, /) -> None:
        if _reporter is not None and not _busy() and _loop_running_here():
            try:
                positive = secs > 0
            except TypeError:
                positive = False  # the original raises its own TypeError below
            if positive:
                _report("sleep", "time.sleep", {"seconds": repr(secs)})
        return original(secs)

    return sleep


def _wrap_socket_method(original: Any, api: str) -> Any:
    # connect() on a datagram socket only records the peer address: it never waits.
    connects = api.rsplit(".", 1)[-1] in ("connect", "connect_ex")

    @functools.wraps(original)
    def method(self: socket.socket, /, *args: Any, **kwargs: Any) -> Any:
        if (
            _reporter is not None
            and not _busy()
            and self.gettimeout() != 0.0
            and not (connects and self.type == socket.SOCK_DGRAM)
            and _loop_running_here()
        ):
            timeout = self.gettimeout()
            mode = "blocking" if timeout is None else f"timeout {timeout:g} s"
            if _report("socket", api, {"mode": mode}):
                return _quietly(original, self, *args, **kwargs)
        return original(self, *args, **kwargs)

    return method


def _reads(mode: object) -> bool:
    return isinstance(mode, str) and not (_WRITE_MODES & set(mode))


def _should_check_read(path: object, mode: object) -> bool:
    return (
        _reporter is not None
        and not _busy()
        and not isinstance(path, int)  # an fd the caller already has: not an open
        and _reads(mode)
        and _loop_running_here()
    )


def _wrap_open(original: Callable[..., Any], api: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if _should_check_read(file, mode) and _report(
            "file", api, {"path": _path_text(file), "mode": mode}, direct=True
        ):
            return _quietly(original, file, mode, *args, **kwargs)
        return original(file, mode, *args, **kwargs)

    return open


def _wrap_path_open(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def open(self: pathlib.Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if _should_check_read(self, mode) and _report(
            "file", "pathlib.Path.open", {"path": str(self), "mode": mode}, direct=True
        ):
            return _quietly(original, self, mode, *args, **kwargs)
        return original(self, mode, *args, **kwargs)

    return open


def _wrap_path_read(original: Callable[..., Any], api: str) -> Callable[..., Any]:
    @functools.wraps(original)
    def read(self: pathlib.Path, *args: Any, **kwargs: Any) -> Any:
        if _should_check_read(self, "r") and _report(
            "file", api, {"path": str(self)}, direct=True
        ):
            return _quietly(original, self, *args, **kwargs)
        return original(self, *args, **kwargs)

    return read


def _path_text(file: object) -> str:
    if isinstance(file, bytes):
        return file.decode(errors="replace")
    return str(file)


# -- install / undo ------------------------------------------------------------------------


_lock = threading.Lock()
_installed = False


def _replace(patches: Patches, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    if getattr(owner, name, None) is None:
        return  # not on this platform (e.g. sendmsg on Windows)
    patches.patch(owner, name, make)


def _take_over(reporter: Reporter, judge: Judge) -> Callable[[], None]:
    global _reporter, _judge
    saved = (_reporter, _judge)
    _reporter, _judge = reporter, judge

    def undo() -> None:
        global _reporter, _judge
        with _lock:
            if _reporter is reporter:
                _reporter, _judge = saved

    return undo


def install(
    reporter: Reporter,
    categories: Collection[str] = CATEGORIES,
    judge: Judge | None = None,
) -> Callable[[], None]:
    """Wrap the blocking calls of ``categories``; return the undo.

    An install while one is active (a pytest session nested in another, in-process) takes
    over the reporting until its undo, with the calls the first install wraps.

    For every blocking call made while a loop runs on the calling thread,
    ``judge(caller, direct)`` says whether it counts (and at which frame); if it does,
    ``reporter(api, hint, detail, caller, site)`` is called on the loop thread before the
    call proceeds. Without a judge every such call counts, at its caller.
    """
    global _reporter, _installed, _judge
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ValueError(
            f"unknown blocking-call categories {unknown}; accepted: {', '.join(CATEGORIES)}"
        )
    with _lock:
        if _installed:
            return _take_over(reporter, judge or (lambda caller, direct: caller))
        patches = Patches()
        try:
            if "sleep" in categories:
                _replace(patches, time, "sleep", _wrap_sleep)
            if "socket" in categories:
                for name in _SOCKET_METHODS:
                    _replace(
                        patches,                        socket.socket, name,
                        functools.partial(_wrap_socket_method, api=f"socket.{name}"),
                    )
                for name in _SSL_METHODS:
                    _replace(
                        patches,                        ssl.SSLSocket, name,
                        functools.partial(_wrap_socket_method, api=f"ssl.SSLSocket.{name}"),
                    )
            if "file" in categories:
                original_open = builtins.open
                wrapped_open = _wrap_open(original_open, "open")
                _replace(patches, builtins, "open", lambda _: wrapped_open)
                if io.open is original_open:  # the same object: keep it the same object
                    _replace(patches, io, "open", lambda _: wrapped_open)
                _replace(patches, pathlib.Path, "open", _wrap_path_open)
                for name in ("read_text", "read_bytes"):
                    _replace(
                        patches,                        pathlib.Path, name,
                        functools.partial(_wrap_path_read, api=f"pathlib.Path.{name}"),
                    )
        except BaseException:
            patches.undo()
            raise
        _reporter = reporter
        _judge = judge or (lambda caller, direct: caller)
        _installed = True

    def undo() -> None:
        global _reporter, _installed
        with _lock:
            if not _installed or _reporter is not reporter:
                return
            _reporter = None
            patches.undo()
            _installed = False

    return undo
