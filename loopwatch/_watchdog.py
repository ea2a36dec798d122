"""H3: the watchdog thread that catches blocked loops while they are blocked.

One daemon thread watches every probed loop (:mod:`._probe`). A stdlib loop busy past
``block_threshold`` since it last waited for I/O is blocked; so is a uvloop loop that has
not run the watchdog's ping within the threshold. While a block goes on, the thread samples
the loop thread's stack at once, at each doubling of its age and at each poll (the last one
is kept), and logs a "still blocked" line past ten thresholds. When the loop thread gets
going again it reports one ``blocked_loop`` incident with the samples (``block_ended``).

The thread sleeps until the moment a busy loop would cross the threshold, and polls loops
that wait for I/O every ``min(threshold, 100 ms)``: it never wakes a loop. Once every loop
has been idle a while it looks less often: stdlib loops wake it when they get going again
(so nothing is seen later), uvloop loops are polled every 100, then 200 ms (a block there
that starts after seconds of idleness is seen up to that much later).

Attribution: the labels in the context of the task that was running, else the handler
whose code object is on the sampled stack (``_blocks.register_handler``), else the
default labels.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import gc
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _blocks, _context, _frames, _runtime, _stalls
from ._compat import asyncio as aio
from ._compat import cpython
from ._frames import Frame
from ._patching import Patches
from ._probe import (
    Probe,
    get_native_id,
    outside_by_type,
    patch_selectors,
    watched_from_outside,
)
from ._tasks import default_labels, task_labels

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["THREAD_NAME", "Watchdog", "install", "register_handler"]

THREAD_NAME = "loopwatch-watchdog"
register_handler = _blocks.register_handler
_MAX_SLEEP = 0.5
# How often a loop that waits for I/O is looked at. Up to the threshold this adds nothing to
# detection: a loop found busy is looked at again exactly when it would cross the threshold.
_MAX_POLL = 0.1
# A C loop's thread spends no CPU at all while it waits for I/O: any CPU since the last look
# means it ran something, except right after the watchdog's own ping, whose tail (the loop
# going back to its wait) costs up to this much. Less than that after a ping is the tail or
# a callback that went straight into a blocking call: where the thread sleeps tells them
# apart (see Watchdog._c_loop_active).
_PONG_TAIL_CPU = 0.0002
# Idle for this long, a loop is looked at less often. A C loop (no Python hook per
# iteration) is polled every _IDLE_POLL_STEPS[i][1] polls after _IDLE_POLL_STEPS[i][0]
# seconds without activity, and at the normal rate again as soon as its thread spends CPU.
# A stdlib loop waiting that long lets the thread sleep up to _DOZE: the loop's next
# iteration wakes it (see the select wrapper in _probe), so no block is seen later for it.
_IDLE_POLL_STEPS = ((5.0, 4), (1.0, 2))
_DOZE = 1.0
# How long after the last loop start the thread keeps polling with no loop to watch.
_LINGER = 1.0

_monotonic = time.monotonic
_perf = time.perf_counter
get_ident = threading.get_ident

# -- garbage-collection time ---------------------------------------------------------------

_gc_seconds = [0.0, 0.0]  # [cumulative seconds in collections, start of the current one]
# Collections of a millisecond or more as (start, end) on the monotonic clock, newest last.
# A block's collection time is summed from here over the whole block: the watchdog's first
# look comes a threshold after the block began (later still while a collection holds the
# GIL), and the collections that ended before it count too.
_GC_LONG = 0.001
_gc_long: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_seconds[1] = _perf()
    else:
        took = _perf() - _gc_seconds[1]
        _gc_seconds[0] += took
        if took >= _GC_LONG:
            end = _monotonic()
            _gc_long.append((end - took, end))


def _gc_during(start: float, end: float) -> float:
    """Seconds of the long collections (see ``_gc_long``) that fell between start and end."""
    total = 0.0
    for began, ended in reversed(tuple(_gc_long)):
        if ended <= start:
            break
        total += max(0.0, min(ended, end) - max(began, start))
    return total


def _thread_cpu(thread_id: int) -> float | None:
    """CPU seconds of another thread (POSIX per-thread clocks), ``None`` where unknown."""
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread_id))
    except (AttributeError, OSError, OverflowError):
        return None


_LINUX = sys.platform.startswith("linux")


def _run_queue_wait(native_id: int) -> float | None:
    """Seconds a thread has spent runnable but waiting for a CPU (Linux), ``None`` elsewhere.

    The second field of its ``schedstat``: on a loaded machine a loop thread that has work
    to do can wait here for most of a block; that time is the machine's, not the code's.
    Read unbuffered: one ``read`` system call, which also runs on the loop thread when a
    block ends (a buffered read there is what blocking-call detectors flag).
    """
    if not native_id or not _LINUX:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb", buffering=0) as file:
            return int(file.read(128).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _waits_for_io(native_id: int) -> bool | None:
    """Whether a thread sleeps in epoll (Linux's wait channel), ``None`` where unknown.

    A C loop waiting for I/O sleeps in ``epoll_wait``; a callback stuck in ``time.sleep``,
    a lock or a blocking read sleeps elsewhere. "0" means running (or a kernel that hides
    wait channels): unknown.
    """
    if not native_id:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/wchan", "rb") as file:
            where = file.read(64)
    except OSError:
        return None
    if not where or where == b"0":
        return None
    return b"ep_poll" in where or b"epoll" in where


class _Wake:
    """A wake-up for the watchdog thread: one lock, no allocation per wait.

    The lock is held while nobody asked for a wake-up; :meth:`set` releases it and the
    waiting thread's timed ``acquire`` returns at once (holding it again).
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        # Not contextlib.suppress: a loop start that finds the thread parked calls this.
        try:  # noqa: SIM105
            self._lock.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def wait(self, timeout: float | None) -> None:
        self._lock.acquire(timeout=-1 if timeout is None else timeout)


class _Block:
    """What the watchdog learnt about one block while it went on."""

    __slots__ = (
        "announced", "context", "cpu", "gcs", "labels", "last", "next_sample", "queued",
        "queued_at", "samples", "seen_at", "since", "still_logged", "task",
    )

    def __init__(
        self, since: float, threshold: float, thread_id: int, native_id: int = 0,
        queued: tuple[float, float] | None = None,
    ) -> None:
        self.since = since  # when the loop became busy (stdlib) or the ping was sent (uvloop)
        self.seen_at = _monotonic()
        self.cpu = _thread_cpu(thread_id)  # the loop thread's CPU clock when first seen
        # The loop thread's wait for a CPU so far, and when it was read: now, or at the first
        # look at this busy period (``queued``: that reading and its time). Its share from
        # there to the block's end is what the block is said to have waited for a CPU.
        self.queued_at = self.seen_at if queued is None else queued[1]
        self.queued = _run_queue_wait(native_id) if queued is None else queued[0]
        self.gcs = _gc_seconds[0]
        self.samples: list[_blocks.Sample] = []
        self.last: _blocks.Sample | None = None
        self.next_sample = threshold
        self.labels: _context.Labels | None = None
        self.task: str | None = None
        # A snapshot of that task's context when it was found blocking (its span, for one).
        self.context: contextvars.Context | None = None
        self.announced = False  # the monitor was told whose task this block is (block_seen)
        self.still_logged = False

    def all_samples(self) -> list[_blocks.Sample]:
        return self.samples + ([self.last] if self.last is not None else [])

    def reentry(self) -> str:
        """The nested call this block mostly waited for ("" when it was mostly something else).

        A loop held by nested calls one after another shows, between them, the code that
        makes them: the block is still theirs when most samples show the loop waiting for
        one (the re-entry incidents report it, with their stalls).
        """
        busy = [s for s in self.all_samples() if s.cause != "idle"]
        waiting = [s for s in busy if s.reentry]
        if busy and 2 * len(waiting) > len(busy):
            return waiting[0].reentry
        return ""


def _open(loop: Any) -> bool:
    return loop is not None and not loop.is_closed()


def _alive(probe: Probe) -> bool:
    if _open(probe.loop()):
        return True
    probe.stop()
    return False


class Watchdog:
    """One thread for every probed loop of one install."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.threshold = monitor.config.block_threshold
        self.tick = monitor.config.lag_tick
        self._lock = threading.Lock()
        # Hands a block over between the watchdog (which starts and samples it) and the
        # loop thread (which ends it); held for microseconds, never while reporting.
        self._blocks = threading.Lock()
        # id(loop) -> its probe, which holds the loop weakly (checked at each look-up): a
        # plain dict, so a loop's first start makes no weak reference with a callback. The
        # looks drop the probes of loops closed or gone.
        self._probes: dict[int, Probe] = {}
        self._active: tuple[Probe, ...] = ()
        self._wake = _Wake()
        self._parked = False  # the thread may sleep until a loop starts (see probe())
        # The thread may sleep until a stdlib loop leaves its wait (the select wrapper in
        # _probe wakes it); _dozable: every loop looked at allows that.
        self.dozing = False
        self._dozable = False
        self._last: Probe | None = None  # the probe started last (a restart finds it here)
        # C loops started and not yet looked at, as [loop weakly, thread id, native thread
        # id, first start's time, probe once made]: noted by the loop's thread, made into
        # probes by this one (_adopt). _young is the last noted (a restart finds it there).
        self._starts: collections.deque[list[Any]] = collections.deque()
        self._young: list[Any] | None = None
        self._forget_at = 64  # a start that finds this many notes drops those of closed loops
        self._prune_at = 8  # a new probe that finds this many drops those of closed loops
        self._stopping = False
        self._thread: threading.Thread | None = None
        # id(probe) -> (busy since, its thread's wait for a CPU at the first look at that
        # busy period); watchdog thread only.
        self._queued: dict[int, tuple[float, float, float]] = {}
        metrics = monitor.metrics
        self.lag = metrics.child(metrics.event_loop_lag_seconds) if metrics is not None else None

    # -- probes (called in loop threads) ---------------------------------------------------

    def probe(self, loop: asyncio.AbstractEventLoop) -> list[Any] | None:
        """Start (or restart) the probe of ``loop``; called in the thread about to run it.

        A C loop without a probe yet only has its start noted: the watchdog thread makes its
        probe at the next look (``_adopt``). That note is returned; its last item stays
        ``None`` until the probe is made, and the loop's restarts meanwhile need no call
        (see ``_runtime.run_loop_start_hooks``).

        Never called for loopwatch's own threads (the loop-start hooks skip them).
        """
        if self._stopping:
            return None
        ident = get_ident()
        note = None
        probe = self._last
        if probe is not None and probe.thread_id == ident and probe.loop() is loop:
            # Probe.start for a restart, inline (asyncio.run starts its loop three times).
            probe.busy_since = probe.started_at = probe.idle_seen = probe.active_seen = (
                _monotonic()
            )
            probe.waiting = False
            probe.ping = 0.0
        else:
            # Not a restart of the loop started last, in the thread it ran in.
            young = self._young
            if young is not None and young[1] == ident and young[0]() is loop:
                # A restart of the C loop noted last: nothing to do until the watchdog has
                # looked at it (its first start's time stands), its probe's restart after.
                probe = young[4]
                if probe is None:
                    note = young
            else:
                probe = self._probes.get(id(loop))
                if probe is None or probe.loop() is not loop:
                    outside = outside_by_type.get(type(loop))
                    if outside is None:
                        outside = watched_from_outside(loop)
                    if outside:
                        # A new C loop: its probe is made at the watchdog's next look
                        # (_adopt), if it is still open then.
                        starts = self._starts
                        if len(starts) >= self._forget_at:
                            self._forget_gone(starts)
                        self._young = note = [
                            weakref.ref(loop), ident, get_native_id(), _monotonic(), None,
                        ]
                        starts.append(note)
                    else:
                        probe = self._add(loop, 0.0, False)
            if probe is not None:
                self._last = probe
                probe.start(loop)
        # The thread sleeps until woken only when no loop was running at its last look
        # (``_parked`` is set before that look: a start it missed finds the flag set).
        if self._parked:
            self._parked = False
            self._wake.set()
        return note

    def _forget_gone(self, starts: collections.deque[list[Any]]) -> None:
        # The notes of C loops that came and went between two looks, dropped by a start
        # that finds many, so a program that starts a loop per call keeps them few. The
        # next sweep waits until the notes left have doubled: many loops open at once (each
        # noted, none looked at yet) cost each start a constant share, not a sweep each.
        for _ in range(len(starts)):
            try:
                record = starts.popleft()
            except IndexError:  # the watchdog took the rest meanwhile
                break
            if _open(record[0]()):
                starts.append(record)
        self._forget_at = max(64, 2 * len(starts))

    def _adopt(self) -> None:
        """Make the probes of the C loops noted since the last look (this thread)."""
        starts = self._starts
        while starts:
            record = starts.popleft()
            loop = record[0]()
            if not _open(loop):
                continue
            probe = self._probes.get(id(loop))
            if probe is None or probe.loop() is not loop:
                probe = self._add(loop, record[3])
            probe.adopt(loop, record[1], record[2], record[3])
            record[4] = probe
            if self._young is record:
                self._last = probe
        self._forget_at = 64

    def probe_of(self, loop: Any) -> Probe | None:
        """The probe of ``loop``, if it has one."""
        probe = self._probes.get(id(loop))
        return probe if probe is not None and probe.loop() is loop else None

    def _add(
        self, loop: asyncio.AbstractEventLoop, at: float = 0.0, c_loop: bool | None = None
    ) -> Probe:
        # The lock taken and released directly: every new stdlib loop comes here, and a
        # with-block costs twice as much.
        lock = self._lock
        lock.acquire()
        try:
            probe = self._probes.get(id(loop))
            if probe is not None and probe.loop() is loop:
                return probe
            probe = Probe(self, loop, at, c_loop)
            self._probes[probe.key] = probe
            active = self._active
            if len(active) >= self._prune_at:
                # Drop the probes of loops closed meanwhile here too, so a program that
                # makes a loop per call keeps this tuple short between looks; the next time
                # once those left have doubled (many loops open at once: no scan per loop).
                active = tuple([p for p in active if self._keep(p)])
                self._prune_at = max(8, 2 * len(active))
            self._active = (*active, probe)
        finally:
            lock.release()
        return probe

    def _keep(self, probe: Probe) -> bool:
        # Under self._lock: whether a probe's loop is still open; forgets it if not.
        if _alive(probe):
            return True
        if self._probes.get(probe.key) is probe:
            del self._probes[probe.key]
        return False

    def wake(self) -> None:
        """Wake the thread now (a loop got going while it dozed)."""
        self._wake.set()

    def observe_lag(self, seconds: float) -> None:
        """One lag sample (the only metric written outside the metrics sink: hot path)."""
        lag = self.lag
        if lag is not None:
            try:
                lag.observe(seconds)
            except Exception as exc:
                _runtime.internal_error("watchdog", exc)

    def block_ended(self, probe: Probe, since: float, duration: float) -> None:
        """A loop thread is going again after ``duration`` seconds busy (past the threshold)."""
        try:
            self.observe_lag(duration)
            with self._blocks:
                block, probe.block = probe.block, None
            if block is not None and block.since != since:
                block = None  # a record of another (earlier) busy period: stale
            cpu = queued = None
            if block is not None and block.cpu is not None:
                spent = time.thread_time() - block.cpu
                watched = _monotonic() - block.seen_at
                if watched > 0:
                    cpu = max(0.0, spent) / watched * duration  # CPU share, scaled to the block
            if block is not None and block.queued is not None:
                now_queued = _run_queue_wait(probe.native_id)
                watched = _monotonic() - block.queued_at
                if now_queued is not None and watched > 0:
                    # The share of the watched part of the block, applied to the whole: the
                    # first look can come late (a crowded machine delays the watchdog too),
                    # and the part before it would otherwise count as the code's own time.
                    share = min(max(0.0, now_queued - block.queued) / watched, 1.0)
                    queued = share * duration
            # Every collection since the first look, and the long ones of the whole block.
            ended = _monotonic()
            gcs = _gc_during(ended - duration, ended)
            if block is not None:
                gcs = max(gcs, _gc_seconds[0] - block.gcs)
            loop = probe.loop()
            if loop is not None:
                self._finish(probe, block, loop, duration, cpu, gcs, queued)
        except Exception as exc:
            _runtime.internal_error("watchdog", exc)

    # -- lifecycle -------------------------------------------------------------------------

    def start_thread(self) -> None:
        self._stopping = False
        thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread = thread
        thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._thread = None
        with self._lock:
            probes, self._active = self._active, ()
            self._probes = {}
            self._last = self._young = None
            self._starts.clear()
        for probe in probes:
            probe.stop()

    def after_fork_in_child(self) -> None:
        """Restart the thread in a forked child; no loop of the parent runs here."""
        self._lock = threading.Lock()
        self._blocks = threading.Lock()
        self._wake = _Wake()
        for probe in self._active:
            probe.stop()
        self._active = ()
        self._probes = {}
        self._last = self._young = None
        self._starts.clear()
        self._parked = self.dozing = False
        if not self._stopping:
            self.start_thread()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            # Set before the look, cleared after it unless nothing is to be watched: a loop
            # that starts during the look either is seen by it or finds the flag set and
            # wakes the thread.
            self._parked = True
            self.dozing = True  # likewise for a stdlib loop leaving its wait
            self._dozable = True
            try:
                timeout = self._check()
            except Exception as exc:
                _runtime.internal_error("watchdog", exc)
                timeout = 1.0
                self._dozable = False
            if timeout is not None:
                self._parked = False
            if timeout is None:
                self._wake.wait(None)  # nothing to watch: sleep until a loop starts
            elif self._dozable and timeout < _DOZE:
                # Every loop has waited for I/O a while: sleep until one gets going again
                # (it wakes this thread), or a loop starts, or _DOZE.
                self._wake.wait(_DOZE)
                self.dozing = False
            else:
                self.dozing = False
                # A plain sleep costs half a timed lock wait here; a loop that starts
                # meanwhile is seen at the next look, at most one poll later.
                time.sleep(timeout)

    def _check(self) -> float | None:
        """Look at every probe once; return how long to sleep (``None``: until woken)."""
        config = self.monitor.config
        self.threshold = threshold = config.block_threshold
        self.tick = config.lag_tick
        poll = min(threshold, _MAX_POLL)
        # uvloop's block start is only known to within the poll before the ping: look twice
        # as often there (a block's duration is then within ±25 ms).
        c_poll = min(threshold / 2, _MAX_POLL / 2)
        timeout: float | None = None
        dead = False
        if self._starts:
            self._adopt()
        for probe in self._active:
            loop = probe.loop()
            if loop is None or loop.is_closed():
                dead = True
                continue
            try:
                wait = self._check_probe(probe, loop, threshold, c_poll if probe.c_loop else poll)
            except Exception as exc:
                _runtime.internal_error("watchdog", exc)
                probe.block = None
                wait = threshold
            if wait is not None and (timeout is None or wait < timeout):
                timeout = wait
        if dead:
            with self._lock:
                self._active = tuple(p for p in self._active if self._keep(p))
                self._prune_at = max(8, 2 * len(self._active))
        if timeout is None:
            last = self._last
            young = self._young
            started = max(last.started_at if last is not None else 0.0,
                          young[3] if young is not None else 0.0)
            if _monotonic() - started < _LINGER:
                # A loop started a moment ago: keep looking at the normal rate a while
                # rather than sleep until the next start wakes this thread. A program
                # that runs asyncio.run() in a loop then pays no wake-up per call.
                self._dozable = False
                return poll
            return None
        return max(timeout, 0.001)

    def _check_probe(
        self, probe: Probe, loop: Any, threshold: float, poll: float
    ) -> float | None:
        """Start, sample or close the block of one probe; return how long to sleep."""
        now = _monotonic()
        if not loop.is_running():
            with self._blocks:
                block, probe.block = probe.block, None
            if block is not None:  # stopped while blocked: over now
                self._finish(probe, block, loop, now - block.since, None, None)
            if now - probe.started_at < 1.0:
                self._dozable = False
                return 0.01  # started a moment ago (the hook runs just before the loop does)
            return None  # a restart wakes the thread
        lead = 0.0
        if probe.c_loop:
            since = probe.ping
            lead = probe.ping_lead  # the loop probably got busy this long before the ping
            self._dozable = False  # no hook per iteration: it must be polled
            if not since:
                # Ping only a loop that is doing something. An idle loop is never woken.
                if not self._c_loop_active(probe):
                    probe.idle_seen = now
                    idle = now - probe.active_seen
                    for after, times in _IDLE_POLL_STEPS:
                        if idle >= after:
                            return poll * times
                    return poll
                probe.active_seen = now
                if now < probe.next_sample:
                    # The activity stays pending (its CPU is not taken as seen): a callback
                    # that went into a blocking call is pinged at the next tick.
                    return min(poll, probe.next_sample - now)
                probe.next_sample = now + self.tick
                # The loop got busy somewhere between the last idle look and now: a block's
                # duration counts from the middle of that window.
                # (At most half the normal poll: the look before may have been a longer,
                # idle one.)
                probe.ping_lead = min(max(now - probe.idle_seen, 0.0), poll) / 2
                if not probe.send_ping(loop, now):
                    return poll
                # Look again within the poll: a ping answered by then lets the next one go
                # out a tick later (a busy loop is sampled at up to 1 / poll per second).
                return min(threshold - probe.ping_lead, poll)
        else:
            if not probe.selector:
                return None  # a selector loopwatch has not hooked: nothing to read
            if probe.waiting:
                if now - probe.busy_since < _IDLE_POLL_STEPS[-1][0]:
                    self._dozable = False  # busy a moment ago: keep looking
                return poll
            self._dozable = False
            since = probe.busy_since
        late = now - since + lead
        if late < threshold:
            self._note_queued(probe, since)
            return min(threshold - late, _MAX_SLEEP)
        still = False
        with self._blocks:
            block = probe.block
            if block is None or block.since != since:
                early = self._queued.pop(id(probe), None)
                block = probe.block = _Block(
                    since, threshold, probe.thread_id, probe.native_id,
                    early[1:] if early is not None and early[0] == since else None,
                )
            still = self._poll(probe, block, late, threshold)
        if still:
            self._log_still_blocked(probe, block, late)
        if block.context is not None and not block.announced:
            block.announced = True
            self._announce(probe, block)
        return poll

    @staticmethod
    def _c_loop_active(probe: Probe) -> bool:
        """Whether a C loop's thread ran anything since the last look (no ping outstanding).

        Its per-thread CPU clock answers, without reading any stack: a thread waiting for
        I/O spends none. Where the clock cannot tell (a little CPU just after a ping), the
        thread's wait channel does (Linux); the stack is read only where neither can (no
        per-thread clocks on this platform), and only where reading it is safe.
        """
        cpu = _thread_cpu(probe.thread_id)
        if cpu is not None:
            spent = cpu - probe.cpu_seen
            if spent <= 0.0:
                return False
            if spent >= _PONG_TAIL_CPU or not probe.ponged:
                return True  # cpu_seen moves on when the ping is answered
        waiting = _waits_for_io(probe.native_id)
        if waiting is not None:
            active = not waiting
        else:
            # Python code on the loop thread, other than the frame that runs the loop, is
            # activity.
            code = probe.idle_code
            try:
                frame = cpython.thread_frame(probe.thread_id)
            except cpython.UnreadableFrames:
                # Nothing to tell by: with a clock, the little CPU is taken as the ping's
                # tail; without one, as activity (a ping per tick, not a block never seen).
                active = cpu is None
            else:
                active = frame is not None and code is not None and frame.f_code is not code
                del frame
        if not active and cpu is not None:
            probe.ponged = False  # that CPU was the ping's tail: seen
            probe.cpu_seen = cpu
        return active

    def _announce(self, probe: Probe, block: _Block) -> None:
        """Tell the monitor, once, which task's context holds the loop (outside the lock)."""
        sample = next((s for s in reversed(block.all_samples()) if s.cause != "idle"), None)
        if sample is None or sample.reentry or block.context is None:
            return  # a nested call's stall: the re-entry incident covers it
        self.monitor.block_seen(
            block.context, sample.stack, sample.late, block.labels or default_labels(),
            block.task, probe.thread_name, probe.loop(),
        )

    def _poll(self, probe: Probe, block: _Block, late: float, threshold: float) -> bool:
        """Sample a block in progress; True when it is time for the "still blocked" line."""
        sample = _blocks.sample_thread(probe.thread_id, late, self._idle_at(probe))
        if late >= block.next_sample:
            block.samples.append(sample)
            block.last = None
            while block.next_sample <= late:
                block.next_sample *= 2
        else:
            block.last = sample
        if block.labels is None and sample.cause != "idle":
            self._attribute(probe, block, sample)
        if late >= 10 * threshold and not block.still_logged and not sample.reentry:
            block.still_logged = True
            return True
        return False

    @staticmethod
    def _idle_at(probe: Probe) -> tuple[str, str] | None:
        code = probe.idle_code
        return None if code is None else (code.co_filename, code.co_name)

    def _note_queued(self, probe: Probe, since: float) -> None:
        """Read the loop thread's wait for a CPU at the first look at a busy period."""
        known = self._queued.get(id(probe))
        if known is not None and known[0] == since:
            return
        queued = _run_queue_wait(probe.native_id)
        if queued is None:
            return
        if len(self._queued) >= 64:  # probes of loops gone: keep it small
            self._queued.clear()
        self._queued[id(probe)] = (since, queued, _monotonic())

    def _attribute(self, probe: Probe, block: _Block, sample: _blocks.Sample) -> None:
        loop = probe.loop()
        task = asyncio.current_task(loop) if loop is not None else None
        labels = None
        if task is not None:
            block.task = task.get_name()
            labels = task_labels(task)
            if labels is not None and labels.handler == _context.NO_HANDLER:
                labels = None
            if block.context is None:
                context = aio.task_context(task)
                block.context = context.copy() if context is not None else None
        block.labels = labels or sample.code_labels

    def _log_still_blocked(self, probe: Probe, block: _Block, late: float) -> None:
        site, sample = _blocks.site_of(block.all_samples())
        labels = block.labels or default_labels()
        self.monitor.progress(
            "blocked_loop",
            duration=late,
            stack=sample.stack if sample is not None else [],
            site=site,
            hint=_blocks.hint_of(sample.cause if sample else "starved", block.all_samples()),
            labels=labels,
            task=block.task,
            loop=probe.loop(),
            thread=probe.thread_name,
            message=f"event loop still blocked after {late:.1f} s",
        )

    def _finish(
        self, probe: Probe, block: _Block | None, loop: Any, duration: float,
        cpu: float | None, gcs: float | None, queued: float | None = None,
    ) -> None:
        """Report a block that ended (``block`` None: no sample saw it).

        ``cpu``: the loop thread's CPU time, scaled to the block; ``queued``: its wait for
        a CPU measured within the block (Linux). Both show in the detail as shares of the
        block (``loop_cpu``, ``loop_queued``).
        """
        threshold = self.monitor.config.block_threshold
        samples = block.all_samples() if block is not None else []
        if duration < threshold and not any(s.cause != "idle" for s in samples):
            return
        site, site_sample = _blocks.site_of(samples)
        detail: dict[str, str] = {}
        cause = _blocks.cause_of(samples, site_sample, duration, cpu, gcs, threshold)
        detail["cause"] = cause
        if samples:
            detail["samples"] = str(len(samples))
            detail["detected_after"] = f"{samples[0].late:.3f}"
            detail["sampled"] = "; ".join(
                f"+{s.late:.3f}s {_frames.user_frame(s.stack) or (s.stack[0] if s.stack else '?')}"
                for s in samples
            )
        unread = next((s.unread for s in samples if s.unread), "")
        if unread:
            detail["stack"] = unread
        if cpu is not None and duration > 0:
            detail["loop_cpu"] = f"{min(cpu / duration, 1.0):.0%}"
        if queued is not None and duration > 0:
            detail["loop_queued"] = f"{min(queued / duration, 1.0):.0%}"
        if gcs:
            detail["gc_seconds"] = f"{gcs:.3f}"
        stack: list[Frame] = []
        if site_sample is not None:
            stack = site_sample.stack
        elif samples:
            detail["loop_at"] = str(samples[0].stack[0]) if samples[0].stack else "?"
        labels = (block.labels if block is not None else None) or default_labels()
        reentry = block.reentry() if block is not None else ""
        if not reentry:
            # The loop thread waited for a nested call for most of the block (its samples
            # may show only the nested loop's idle wait): that stall is reported, once.
            end = _monotonic()
            stall = _stalls.covering(probe.thread_id, end - duration, end)
            reentry = stall.api if stall is not None else ""
        if reentry:
            # The re-entry guard reports this stall itself (a reentry/cross_thread_run
            # incident with its duration): a DEBUG line keeps what the samples showed.
            detail["reentry"] = reentry
            self.monitor.progress(
                "blocked_loop", duration=duration, stack=stack, site=site, labels=labels,
                loop=loop, thread=probe.thread_name, detail=detail, debug=True,
                message=f"event loop stalled {duration * 1000:.1f} ms by {reentry} "
                "(already reported as a re-entry)",
            )
            return
        self.monitor.report(
            "blocked_loop", api="", action="", duration=duration, stack=stack, site=site,
            hint=_blocks.hint_of(cause, samples), labels=labels,
            task=block.task if block else None, loop=loop, thread=probe.thread_name, detail=detail,
            context=block.context if block is not None else None,
        )


# -- install -------------------------------------------------------------------------------

_active: Watchdog | None = None
def _after_fork_in_child() -> None:
    watchdog = _active
    if watchdog is not None:
        watchdog.after_fork_in_child()


def install(monitor: Monitor) -> Callable[[], None]:
    """Start the probes and the watchdog thread (unless ``watchdog=False``); return the undo."""
    global _active
    if not monitor.config.watchdog:
        return lambda: None
    watchdog = Watchdog(monitor)
    patches = Patches()
    forget = patch_selectors(patches)
    gc.callbacks.append(_on_gc)
    remove_hook = _runtime.on_loop_start(watchdog.probe)
    _active = watchdog
    _runtime.after_fork_in_child("watchdog", _after_fork_in_child)
    watchdog.start_thread()
    running = aio.get_running_loop()
    if running is not None and not _runtime.current_thread_is_ours():
        watchdog.probe(running)

    def undo() -> None:
        global _active
        remove_hook()
        if _on_gc in gc.callbacks:
            gc.callbacks.remove(_on_gc)
        if _active is watchdog:
            _active = None
        watchdog.stop()
        patches.undo()
        forget()

    return undo


def rebind(monitor: Monitor) -> None:
    """Point the running watchdog at ``monitor``'s metrics (its registry changed)."""
    watchdog = _active
    if watchdog is not None and watchdog.monitor is monitor:
        metrics = monitor.metrics
        watchdog.lag = (
            metrics.child(metrics.event_loop_lag_seconds) if metrics is not None else None
        )
