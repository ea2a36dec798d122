"""Loop-health probes: how long each loop is busy between two waits for I/O.

Nothing here adds a timer or a handle to a stdlib loop, replaces an attribute of a loop, or
wakes an idle loop. What is measured, per loop type:

* **stdlib loops** (selector-based: the default loop on Linux and macOS): the ``select``
  method of the standard selector classes is wrapped at class level. A loop iteration
  waits there for I/O, then runs every ready callback; the time from the end of one wait to
  the start of the next is how long the loop was busy, the longest a callback made ready
  in that iteration had to wait. One iteration per ``lag_tick`` is sampled into
  ``loopwatch_event_loop_lag_seconds``, and every iteration busy past ``block_threshold``
  (a block). An idle loop sits in ``select``: no sample, no cost. Other users of those
  selector classes pay one dictionary look-up per call.
* **uvloop**: the iteration runs in C with no Python hook, so the watchdog thread checks
  from outside whether the loop is doing anything: CPU time spent by the loop thread since
  the last look (a per-thread CPU clock; a thread waiting for I/O spends none), and where
  that cannot tell (a little CPU just after the watchdog's own callback) the thread's wait
  channel on Linux, else its innermost frame. No stack is read while the loop idles. When
  it is busy, the watchdog posts one callback (``call_soon_threadsafe``), at most once per
  ``lag_tick``; the time it takes to run is the lag sample, and a callback not run within
  ``block_threshold`` is a block. So a busy uvloop gets one handle per tick, an idle one
  none, plus one at the watchdog's first look at a loop, to learn which frame runs it.
  That first look is also when a uvloop loop's probe is made, on the watchdog thread: the
  loop's own thread only notes the start (the loop weakly, the thread, the time), so a loop
  that closes before the watchdog looks (a short ``asyncio.run``) costs next to nothing.

The probe of a loop is written by the loop's thread and read by the watchdog thread
without locks (plain attribute reads and writes of floats and booleans).
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _runtime
from ._compat import asyncio as aio
from ._compat import cpython
from ._compat import uvloop as uvl
from ._patching import Patches

if TYPE_CHECKING:
    from ._watchdog import Watchdog

__all__ = [
    "Probe", "outside_by_type", "patch_selectors", "probe_for_selector", "watched_from_outside",
]

_monotonic = time.monotonic
get_ident = threading.get_ident


def _no_native_id() -> int:
    return 0  # a platform without kernel thread ids: unknown


# The kernel's id of the calling thread (missing on a few platforms).
get_native_id: Callable[[], int] = getattr(threading, "get_native_id", _no_native_id)

# id(selector) -> the probe of the loop that waits on it. The probe holds its selector
# weakly and the select wrapper checks it is the one: an id reused by a new selector after
# the loop's was collected finds a probe of another selector, ignored (and dropped when the
# watchdog forgets the dead loop). No finalizer per loop: a program may start thousands.
_by_selector: dict[int, Probe] = {}


def probe_for_selector(selector: object) -> Probe | None:
    """The probe waiting on ``selector`` (for tests and the select wrapper)."""
    probe = _by_selector.get(id(selector))
    if probe is None or probe.selector_ref() is not selector:
        return None
    return probe


def _no_selector() -> None:
    return None


# Loop type -> whether its iteration runs in C (uvloop, or anything that is not asyncio's
# own loop): watched from outside, with no hook per iteration.
outside_by_type: dict[type, bool] = {}


def watched_from_outside(loop: object) -> bool:
    """Whether ``loop`` runs its iterations in C, so the watchdog watches it from outside."""
    kind = type(loop)
    outside = outside_by_type.get(kind)
    if outside is None:
        outside = outside_by_type[kind] = (
            uvl.is_uvloop(loop) or not isinstance(loop, asyncio.BaseEventLoop)
        )
    return outside


class Probe:
    """The busy/idle state of one loop."""

    # Defaults at class level: a new probe writes only what differs (a program may start a
    # loop per call), and the fields a loop of the other kind never uses stay unwritten.
    thread_id = 0
    _thread_name = ""  # looked up when first asked (see thread_name)
    native_id = 0  # the kernel's id of the loop thread (0: unknown)
    waiting = False  # in select (stdlib loops)
    idle_code: Any = None  # code of the frame that runs a C loop (learnt)
    ping = 0.0  # when the outstanding uvloop ping was posted (0: none)
    cpu_seen = 0.0  # the loop thread's CPU time at the watchdog's last look (uvloop)
    idle_seen = 0.0  # when the watchdog last found it idle (uvloop)
    active_seen = 0.0  # when the watchdog last found it active, or it started (uvloop)
    ping_lead = 0.0  # how long before the ping the loop probably got busy (uvloop)
    ponged = False  # a ping was answered since the watchdog's last look (uvloop)
    block: Any = None  # the watchdog's record of a block in progress
    selector = 0  # id of the selector the probe is registered for
    selector_ref: Callable[[], object] = staticmethod(_no_selector)  # that selector, weakly
    started_at = 0.0  # monotonic time of the last start

    def __init__(
        self, watchdog: Watchdog, loop: asyncio.AbstractEventLoop, at: float = 0.0,
        c_loop: bool | None = None,
    ) -> None:
        self.watchdog = watchdog
        self.loop = weakref.ref(loop)
        self.key = id(loop)  # where the watchdog files it
        # When the current iteration left its wait: now, or when the loop started (``at``, a
        # C loop's probe made later by the watchdog thread).
        self.busy_since = now = at or _monotonic()
        # The first lag sample is taken a tick after the probe starts: a loop that lives less
        # than that (a short asyncio.run) writes no sample at all.
        self.next_sample = now + watchdog.tick
        self.c_loop = watched_from_outside(loop) if c_loop is None else c_loop

    @property
    def thread_name(self) -> str:
        """The name of the loop's thread, looked up when first asked (only reports ask)."""
        name = self._thread_name
        if not name and self.thread_id:
            name = self._thread_name = _runtime.thread_name(self.thread_id)
        return name

    # -- the loop's thread -----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop is about to run in this thread (again)."""
        if get_ident() != self.thread_id:
            self._moved(loop)
        # The rest is what a restart needs (``asyncio.run`` starts its loop three times):
        # the loop is busy from now on, with no ping outstanding.
        self.busy_since = self.started_at = self.idle_seen = self.active_seen = _monotonic()
        self.waiting = False
        self.ping = 0.0

    def _moved(self, loop: asyncio.AbstractEventLoop) -> None:
        # The first start of this loop in this thread: what is learnt once, not per start.
        self.thread_id = get_ident()
        self._thread_name = ""
        # The kernel's id of the thread: where it sleeps tells an idle C loop, and how long
        # it waited for a CPU tells a blocked loop held by the machine (Linux).
        self.native_id = get_native_id()
        if self.c_loop:
            # Every start goes through loopwatch's run_forever wrapper, so the frame that
            # runs the loop is the same at each start in this thread (a pong learns it again).
            self.idle_code = None
            loop.call_soon(self._learn_idle)
            return
        if self.selector:
            return  # registered at an earlier start; a loop keeps its selector
        selector = aio.loop_selector(loop)
        if selector is None or getattr(type(selector), "select", None) not in _wrappers:
            return  # a selector loopwatch has not hooked (a test double): not probed
        self.selector_ref = weakref.ref(selector)
        self.selector = key = id(selector)
        _by_selector[key] = self

    # -- the watchdog thread: a C loop's probe, made at the watchdog's first look ----------

    def adopt(
        self, loop: asyncio.AbstractEventLoop, thread_id: int, native_id: int, at: float
    ) -> None:
        """A C loop that started at ``at`` in thread ``thread_id`` (recorded by that thread)."""
        if thread_id != self.thread_id:
            self.thread_id = thread_id
            self.native_id = native_id
            self._thread_name = ""
            # The one handle a C loop gets without being busy: the frame that runs it is
            # learnt at once (a ping learns it too, but only a busy loop gets pinged).
            self.idle_code = None
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(self._learn_idle)
        if at > self.started_at:
            self.busy_since = self.started_at = self.idle_seen = self.active_seen = at

    def before_wait(self, now: float | None = None) -> None:
        """The loop goes back to waiting for I/O: the iteration's busy time is known."""
        if now is None:
            now = _monotonic()
        busy = now - self.busy_since
        self.waiting = True
        watchdog = self.watchdog
        if busy >= watchdog.threshold:
            watchdog.block_ended(self, self.busy_since, busy)
        elif now >= self.next_sample:
            self.next_sample = now + watchdog.tick
            watchdog.observe_lag(busy)

    def _learn_idle(self) -> None:
        # Called by the C loop: the innermost Python frame is the one that runs the loop,
        # the frame a sample shows whenever no Python callback is running.
        self.idle_code = cpython.getframe(1).f_code

    def pong(self, sent: float) -> None:
        """The watchdog's ping ran on a C loop: its delay is the lag."""
        late = _monotonic() - sent
        # Run by the C loop like _learn_idle: the frame below is the one that runs the loop
        # (kept up to date across restarts, which do not post _learn_idle again).
        self.idle_code = cpython.getframe(1).f_code
        self.ping = 0.0
        self.cpu_seen = time.thread_time()  # the pong's own CPU is not the loop's activity
        self.ponged = True
        watchdog = self.watchdog
        if late >= watchdog.threshold:
            watchdog.block_ended(self, sent, late + self.ping_lead)
        else:
            watchdog.observe_lag(late)

    # -- the watchdog thread ---------------------------------------------------------------

    def send_ping(self, loop: asyncio.AbstractEventLoop, now: float) -> bool:
        """Post the lag ping to a C loop busy with Python code; False if it cannot take it."""
        self.ping = now
        try:
            loop.call_soon_threadsafe(self.pong, now)
        except RuntimeError:  # closed meanwhile
            self.ping = 0.0
            return False
        return True

    def stop(self) -> None:
        """Forget this probe's selector registration."""
        if self.selector and _by_selector.get(self.selector) is self:
            _by_selector.pop(self.selector, None)
        self.selector = 0
        self.selector_ref = _no_selector


# -- the class-level hook ------------------------------------------------------------------

# The wrappers loopwatch installed, to tell them from a user's override.
_wrappers: set[Any] = set()


def _make_select(original: Callable[..., Any]) -> Callable[..., Any]:
    def select(self: Any, timeout: float | None = None) -> Any:
        probe = _by_selector.get(id(self))
        if probe is None or probe.selector_ref() is not self:
            return original(self, timeout)
        # The probe's wait bookkeeping, inline: this runs at every iteration of every probed
        # loop. Only a lag sample due or a block ending takes a call (Probe.before_wait).
        now = _monotonic()
        probe.waiting = True
        if now >= probe.next_sample or now - probe.busy_since >= probe.watchdog.threshold:
            try:
                probe.before_wait(now)
            except Exception as exc:
                _runtime.internal_error("watchdog", exc)
        try:
            return original(self, timeout)
        finally:
            probe.busy_since = _monotonic()
            probe.waiting = False
            watchdog = probe.watchdog
            if watchdog.dozing:  # it sleeps until a loop gets going: this one does
                watchdog.dozing = False
                watchdog.wake()

    select.__wrapped__ = original  # type: ignore[attr-defined]
    select.__doc__ = original.__doc__
    select.__name__ = "select"
    select.__qualname__ = getattr(original, "__qualname__", "select")
    return select


def patch_selectors(patches: Patches) -> Callable[[], None]:
    """Wrap ``select`` of every standard selector class; return the undo for the table."""
    for name in ("EpollSelector", "KqueueSelector", "DevpollSelector", "PollSelector",
                 "SelectSelector"):
        cls = getattr(selectors, name, None)
        if cls is None or "select" not in cls.__dict__:
            continue
        _wrappers.add(patches.patch(cls, "select", _make_select))

    def forget() -> None:
        _wrappers.clear()
        _by_selector.clear()

    return forget
