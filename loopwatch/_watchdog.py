"""H3: the lag probe and the watchdog thread.

The probe is a timer on each loop, at a fixed rate (``lag_tick``, 20 ms by default). Each
tick measures how late it fired into ``loopwatch_event_loop_lag_seconds`` and stores when
the next one is due in a plain attribute. It starts on the loop running at install and on
every loop that starts later (``_reentry.on_loop_start``, seen by the patched
``run_forever`` of the stdlib loop and of uvloop).

One daemon thread watches every probed loop. It reads the due time without locks and
without waking the loop, and sleeps until the moment a loop would be late past
``block_threshold``. A loop late past it is blocked: the thread samples the loop thread's
stack (``sys._current_frames``) at once, again at each doubling of the lateness and at
each poll while the block goes on (the last one is kept), and reports one
``blocked_loop`` incident when the next tick shows the block is over. The samples are raw
frame walks (code locations only). A block that goes on past ten thresholds gets a
"still blocked" line at ERROR while it lasts.

Attribution: the labels in the context of the task that was running (from this thread:
``asyncio.current_task(loop)``), else the handler whose code object is on the sampled
stack (:func:`register_handler`), else the default labels. The cause (CPU work, a blocking
call, a lock or join, garbage collection, an import, a starved loop) picks the hint.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
import time
import types
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _context, _frames, _reentry
from ._frames import Frame
from ._tasks import default_labels, task_labels

if TYPE_CHECKING:
    from ._monitor import Monitor

__all__ = ["THREAD_NAME", "install", "register_handler"]

THREAD_NAME = "loopwatch-watchdog"
_MAX_SLEEP = 0.5
_STILL_FOLD_WINDOW = 60.0  # the same fold window as incidents' log lines (PRODUCT.md §5)
_EARLY = 0.002  # a tick this much before its due time is a stale timer, not clock rounding

_monotonic = time.monotonic
_perf = time.perf_counter
_thread_time = time.thread_time

_HINTS = {
    "cpu": (
        "CPU-bound work ran on the event loop. Move it to a worker: `await "
        "asyncio.to_thread(fn, ...)`, or a process pool for pure-Python number crunching."
    ),
    "blocking_call": (
        "A blocking call (time.sleep, sync I/O, a sync SDK) held the event loop. Use its async "
        "variant, or run it with `await asyncio.to_thread(...)`; in Starlette/FastAPI a plain "
        "`def` endpoint runs in the threadpool."
    ),
    "lock": (
        "The loop thread waited on a thread lock, Event, join, queue or concurrent Future. Await "
        "it instead: `asyncio.wrap_future(...)`, `await asyncio.to_thread(thread.join)`, or an "
        "asyncio.Lock/Event."
    ),
    "gc": (
        "Garbage collection held the loop for most of the block. Fewer long-lived container "
        "objects help; `gc.freeze()` after startup keeps them out of full collections."
    ),
    "import": (
        "A module was imported on the event loop (a first use inside a handler). Import it at "
        "startup instead."
    ),
    "starved": (
        "The loop was idle but could not run: another thread held the GIL (CPU-bound Python "
        "or a C extension) or the process was starved of CPU. Check other threads and the "
        "CPU limit of the container."
    ),
    "unsampled": (
        "The loop was late just past the threshold and the block ended before a stack could "
        "be sampled; see the lag histogram for how often this happens."
    ),
}

# -- attribution by code object ------------------------------------------------------------

_handler_codes: weakref.WeakKeyDictionary[types.CodeType, _context.Labels]
_handler_codes = weakref.WeakKeyDictionary()


def register_handler(func: Callable[..., Any], framework: str, handler: str) -> None:
    """Attribute blocks sampled inside ``func`` to ``handler`` when no task context says so.

    For adapters: a block in a plain callback (no task running) or in a task that carries
    no labels is still attributed when the handler's own code is on the sampled stack.
    """
    target: Any = func
    for _ in range(16):  # unwrap decorators (functools.wraps) and bound methods
        target = getattr(target, "__func__", target)
        inner = getattr(target, "__wrapped__", None)
        if inner is None:
            break
        target = inner
    code = getattr(target, "__code__", None)
    if isinstance(code, types.CodeType):
        _handler_codes[code] = _context.Labels(framework, handler)


# -- garbage-collection time ---------------------------------------------------------------

_gc_seconds = [0.0, 0.0]  # [cumulative seconds in collections, start of the current one]


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_seconds[1] = _perf()
    else:
        _gc_seconds[0] += _perf() - _gc_seconds[1]


# -- what a sample shows -------------------------------------------------------------------

_IDLE_FUNCTIONS = frozenset(
    {"select", "poll", "_run_once", "run_forever", "run_until_complete", "run", "_poll"}
)
_IDLE_FILES = frozenset(
    {"selectors.py", "base_events.py", "runners.py", "_reentry.py", "events.py", "__init__.py"}
)
_LOCK_FILES = tuple(
    os.sep + os.path.join(*parts)
    for parts in (
        ("threading.py",), ("queue.py",), ("concurrent", "futures", "_base.py"),
        ("multiprocessing", "connection.py"), ("multiprocessing", "pool.py"),
    )
)
_IMPORT_PREFIX = "<frozen importlib._bootstrap"


def _basename(path: str) -> str:
    return path.rsplit(os.sep, 1)[-1]


def classify(stack: list[Frame], idle_at: tuple[str, str] | None = None) -> str:
    """What a sampled loop-thread stack shows: idle, import, lock or code.

    ``idle_at`` is (file, function) of the frame that runs a loop written in C (uvloop):
    with no Python callback running, it is the innermost frame.
    """
    if not stack:
        return "idle"
    for frame in stack:
        if frame.file.startswith(_IMPORT_PREFIX):
            return "import"
    top = stack[0]
    if idle_at is not None and (top.file, top.function) == idle_at:
        return "idle"
    base = _basename(top.file)
    if top.function in _IDLE_FUNCTIONS and (
        (base in _IDLE_FILES and not _frames.is_user_file(top.file)) or "uvloop" in top.file
    ):
        return "idle"
    if top.file.endswith(_LOCK_FILES) and not _frames.is_user_file(top.file):
        return "lock"
    return "code"


class _Sample:
    __slots__ = ("cause", "code_labels", "late", "reentry", "stack")

    def __init__(
        self, late: float, stack: list[Frame], code_labels: _context.Labels | None, reentry: str,
        idle_at: tuple[str, str] | None = None,
    ) -> None:
        self.late = late
        self.stack = stack
        self.code_labels = code_labels
        self.reentry = reentry  # the offloaded call the loop thread was waiting for, if any
        self.cause = classify(stack, idle_at)


def _sample_thread(thread_id: int, late: float, idle_at: tuple[str, str] | None = None) -> _Sample:
    """A raw walk of the loop thread's current stack (no inspect, no linecache)."""
    frame: types.FrameType | None = sys._current_frames().get(thread_id)
    try:
        stack = _frames.stack_from_frame(frame)
        code_labels = None
        if _handler_codes:
            walk = frame
            while walk is not None and code_labels is None:
                code_labels = _handler_codes.get(walk.f_code)
                walk = walk.f_back
        reentry = _reentry.offloading.get(thread_id, "")
        return _Sample(late, stack, code_labels, reentry, idle_at)
    finally:
        del frame


# -- the probe -----------------------------------------------------------------------------


class _Probe:
    """The lag timer of one loop. Written by the loop thread, read by the watchdog."""

    __slots__ = (
        "block", "c_loop", "cpu", "due", "gcs", "handle", "idle_at", "late_due", "learn", "loop",
        "stopped", "thread_id", "thread_name", "watchdog",
    )

    def __init__(self, watchdog: _Watchdog, loop: asyncio.AbstractEventLoop) -> None:
        self.watchdog = watchdog
        self.loop = weakref.ref(loop)
        self.thread_id = 0
        self.thread_name = ""
        self.due = 0.0  # monotonic time the next tick is due: the watchdog reads only this
        self.handle: asyncio.TimerHandle | None = None
        self.cpu = 0.0  # the loop thread's CPU time and the gc total at the last tick
        self.gcs = 0.0
        # The due time of the last tick that ran late past the threshold (it reported that
        # block itself), and the block the watchdog is sampling; both under its lock.
        self.late_due = -1.0
        self.block: _Block | None = None
        self.stopped = False
        # A loop written in C (uvloop) calls the tick straight from the frame that runs it:
        # that frame, innermost in a sample, means the loop is idle.
        self.c_loop = not isinstance(loop, asyncio.BaseEventLoop)
        self.learn = False
        self.idle_at: tuple[str, str] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """(Re)start ticking; called in the loop's thread as it starts (or runs, at install).

        A loop run again and again (``run_until_complete`` in a sync wrapper) keeps the
        timer it has pending: a restart costs a few attribute writes, no new timer.
        """
        current = threading.current_thread()
        self.thread_id = current.ident or threading.get_ident()
        self.thread_name = current.name
        self.stopped = False
        self.learn = self.c_loop
        self.cpu = _thread_time()
        self.gcs = _gc_seconds[0]
        now = _monotonic()
        handle = self.handle
        if handle is not None and not handle.cancelled():
            if now > self.due:
                # Stopped past the due time: the pending timer fires at once and _tick,
                # finding it early for the new due time, re-arms it (no bogus lateness).
                self.due = now + self.watchdog.monitor.config.lag_tick
            return
        tick = self.watchdog.monitor.config.lag_tick
        self.due = now + tick
        self.handle = loop.call_later(tick, self._tick)

    def _tick(self) -> None:
        if self.stopped:
            return
        if self.learn:
            self.learn = False
            runner = sys._getframe(1)
            self.idle_at = (runner.f_code.co_filename, runner.f_code.co_name)
            del runner
        now = _monotonic()
        due = self.due
        late = now - due
        if late < 0.0:
            if late < -_EARLY:  # a timer left from before a restart: wait for the due time
                loop = self.loop()
                if loop is not None:
                    self.handle = loop.call_later(-late, self._tick)
                return
            late = 0.0  # timers may fire a clock tick early (uvloop: 1 ms resolution)
        monitor = self.watchdog.monitor
        config = monitor.config
        metrics = monitor.metrics
        if metrics is not None:
            try:
                metrics.event_loop_lag_seconds.observe(late)
            except Exception as exc:
                from ._monitor import internal_error

                internal_error("watchdog", exc)
        cpu = _thread_time()
        gcs = _gc_seconds[0]
        if late >= config.block_threshold:
            # The block is over: report it now, from this thread, so the incident is out
            # within the loop iteration that follows the block.
            try:
                self.watchdog.block_ended(self, (due, late, cpu - self.cpu, gcs - self.gcs))
            except Exception as exc:
                from ._monitor import internal_error

                internal_error("watchdog", exc)
        self.cpu = cpu
        self.gcs = gcs
        tick = config.lag_tick
        following = due + tick
        if following <= now:  # fell behind: restart the grid instead of firing a burst
            following = now + tick
        self.due = following
        loop = self.loop()
        if loop is not None:
            self.handle = loop.call_later(following - now, self._tick)

    def stop(self) -> None:
        """Stop ticking (from any thread)."""
        self.stopped = True
        loop, handle = self.loop(), self.handle
        if loop is None or handle is None or loop.is_closed():
            return
        if loop.is_running() and self.thread_id != threading.get_ident():
            try:
                loop.call_soon_threadsafe(handle.cancel)
            except RuntimeError:
                return  # closed meanwhile; the stopped flag makes a last tick a no-op
        else:
            handle.cancel()


# -- one block -----------------------------------------------------------------------------


class _Block:
    """What the watchdog learnt about one block while it went on."""

    __slots__ = (
        "due", "labels", "last", "next_sample", "samples", "still_logged", "task",
    )

    def __init__(self, due: float, threshold: float) -> None:
        self.due = due
        self.samples: list[_Sample] = []
        self.last: _Sample | None = None
        self.next_sample = threshold
        self.labels: _context.Labels | None = None
        self.task: str | None = None
        self.still_logged = False

    def all_samples(self) -> list[_Sample]:
        return self.samples + ([self.last] if self.last is not None else [])

    def reentry(self) -> str:
        """The offloaded call this whole block waited for ("" if any of it was something else)."""
        busy = [s for s in self.all_samples() if s.cause != "idle"]
        if busy and all(s.reentry for s in busy):
            return busy[0].reentry
        return ""


def _site_of(samples: list[_Sample]) -> tuple[Frame | None, _Sample | None]:
    """The user frame seen most often while blocked (the earliest on ties), and its sample."""
    counts: Counter[Frame] = Counter()
    first: dict[Frame, _Sample] = {}
    for sample in samples:
        if sample.cause == "idle":
            continue
        site = _frames.user_frame(sample.stack)
        if site is None:
            continue
        counts[site] += 1
        first.setdefault(site, sample)
    if not counts:
        busy = [s for s in samples if s.cause != "idle"]
        return None, busy[0] if busy else None
    best = max(counts.values())
    for site, sample in first.items():  # insertion order: the earliest first
        if counts[site] == best:
            return site, sample
    return None, None


# -- the watchdog thread -------------------------------------------------------------------


class _Watchdog:
    """One thread for every probed loop of one install."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.threshold = monitor.config.block_threshold
        self.tick = monitor.config.lag_tick
        self._lock = threading.Lock()
        # Hands a block over between the watchdog (which starts and samples it) and the
        # loop's tick (which ends it); held for microseconds, never while reporting.
        self._blocks = threading.Lock()
        self._probes: weakref.WeakKeyDictionary[Any, _Probe] = weakref.WeakKeyDictionary()
        self._active: tuple[_Probe, ...] = ()
        self._wake = threading.Event()
        # When the thread will look next (monotonic; inf: only when woken). A loop start
        # wakes it only if it would look too late for the new probe: starts stay cheap.
        self._next_look = float("inf")
        # Site of a "still blocked" line -> when it was last logged (monotonic).
        self._still_logged_at: dict[Any, float] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- probes (called in loop threads) ---------------------------------------------------

    def probe(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start (or restart) the probe of ``loop``; called in the thread about to run it."""
        if self._stopping or threading.current_thread().name.startswith("loopwatch-"):
            return  # loopwatch's own offload workers: their stalls are the re-entry's
        probe = self._probes.get(loop)
        if probe is None:
            with self._lock:
                probe = self._probes.get(loop)
                if probe is None:
                    probe = _Probe(self, loop)
                    self._probes[loop] = probe
                    self._active = (*self._active, probe)
        probe.start(loop)
        if probe.due + self.threshold < self._next_look:
            self._wake.set()

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
            self._probes = weakref.WeakKeyDictionary()
        for probe in probes:
            probe.stop()

    def after_fork_in_child(self) -> None:
        """Restart the thread in a forked child. No loop of the parent runs here (asyncio
        forgets the running loop on fork): drop every probe; loops started in the child get
        new ones."""
        self._lock = threading.Lock()
        self._blocks = threading.Lock()
        self._wake = threading.Event()
        for probe in self._active:
            probe.stopped = True
        self._active = ()
        self._probes = weakref.WeakKeyDictionary()
        if not self._stopping:
            self.start_thread()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                timeout = self._check()
            except Exception as exc:
                from ._monitor import internal_error

                internal_error("watchdog", exc)
                timeout = 1.0
            self._next_look = _monotonic() + timeout if timeout is not None else float("inf")
            self._wake.wait(timeout)
            self._wake.clear()

    def _check(self) -> float | None:
        """Look at every probe once; return how long to sleep (``None``: until woken)."""
        config = self.monitor.config
        self.threshold = threshold = config.block_threshold
        self.tick = config.lag_tick
        poll = min(self.tick, threshold / 2)
        timeout: float | None = None
        dead = False
        for probe in self._active:
            loop = probe.loop()
            if loop is None or probe.stopped:
                dead = True
                continue
            try:
                wait = self._check_probe(probe, loop, threshold, poll)
            except Exception as exc:
                from ._monitor import internal_error

                internal_error("watchdog", exc)
                probe.block = None
                wait = threshold
            if wait is not None and (timeout is None or wait < timeout):
                timeout = wait
        if dead:
            with self._lock:
                self._active = tuple(
                    p for p in self._active if p.loop() is not None and not p.stopped
                )
        return None if timeout is None else max(timeout, 0.001)

    def _check_probe(
        self, probe: _Probe, loop: Any, threshold: float, poll: float
    ) -> float | None:
        """Start, sample or close the block of one probe; return how long to sleep."""
        ended: _Block | None = None
        still = False
        with self._blocks:
            now = _monotonic()
            due = probe.due
            late = now - due
            block = probe.block
            if block is not None and (due != block.due or not loop.is_running()):
                # Over without a late tick: the loop stopped, or restarted, while late.
                ended, block, probe.block = block, None, None
            elif (
                block is None and late >= threshold and probe.late_due != due
                and loop.is_running() and not loop.is_closed()
            ):
                block = probe.block = _Block(due, threshold)
            if block is not None:
                still = self._poll(probe, block, late, threshold)
        if block is not None:
            if still:
                self._log_still_blocked(probe, block, late)
            return poll
        if ended is not None:
            self._finish(probe, ended, loop, late, None)
            return 0.0  # look again at once, at the probe's new state
        if late < threshold:
            # Sleep until it would be late; at most _MAX_SLEEP, so a new threshold given to
            # reconfigure() applies soon.
            return min(threshold - late, _MAX_SLEEP)
        return None  # stopped: its next start restarts the probe and wakes us

    def block_ended(self, probe: _Probe, tick: tuple[float, float, float, float]) -> None:
        """Called by a tick that ran late past the threshold, in the loop's thread."""
        with self._blocks:
            probe.late_due = tick[0]
            block = probe.block
            probe.block = None
        if block is not None and block.due != tick[0]:
            block = None  # sampled before a restart of the loop: stale
        loop = probe.loop()
        if loop is not None:
            self._finish(probe, block, loop, tick[1], tick)

    def _poll(self, probe: _Probe, block: _Block, late: float, threshold: float) -> bool:
        """Sample a block in progress; True when it is time for the "still blocked" line."""
        sample = _sample_thread(probe.thread_id, late, probe.idle_at)
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

    def _attribute(self, probe: _Probe, block: _Block, sample: _Sample) -> None:
        loop = probe.loop()
        task = asyncio.current_task(loop) if loop is not None else None
        labels = None
        if task is not None:
            block.task = task.get_name()
            labels = task_labels(task)
            if labels is not None and labels.handler == _context.NO_HANDLER:
                labels = None
        block.labels = labels or sample.code_labels

    def _log_still_blocked(self, probe: _Probe, block: _Block, late: float) -> None:
        from ._incidents import Incident
        from ._logging import logger
        from ._monitor import loop_name

        site, sample = _site_of(block.all_samples())
        # Fold like incidents: one "still blocked" line per site per fold window, so a
        # handler that blocks long on every request does not log on every request.
        mono = time.monotonic()
        last = self._still_logged_at.get(site)
        if last is not None and mono - last < _STILL_FOLD_WINDOW:
            return
        if len(self._still_logged_at) > 1000:
            self._still_logged_at.clear()
        self._still_logged_at[site] = mono
        labels = block.labels or default_labels()
        now = time.time()
        incident = Incident(
            kind="blocked_loop", api="", action="", framework=labels.framework,
            handler=labels.handler, site=site,
            stack=tuple(_frames.without_own_frames(sample.stack)) if sample else (),
            thread=probe.thread_name, task=block.task, loop=loop_name(probe.loop()),
            duration=late, count=1, first_seen=now, last_seen=now,
            hint=_HINTS.get(sample.cause if sample else "starved", _HINTS["blocking_call"]),
            detail={"still_blocked": "true"},
        )
        where = f" at {site}" if site is not None else ""
        try:
            logger.error(
                "loopwatch: event loop still blocked after %.1f s%s (framework=%s handler=%s)",
                late, where, labels.framework, labels.handler,
                extra={"loopwatch": incident.as_dict()},
            )
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("logging", exc)

    def _finish(
        self, probe: _Probe, block: _Block | None, loop: Any, duration: float,
        tick: tuple[float, float, float, float] | None,
    ) -> None:
        """Report a block that ended (``block`` None: the tick saw it, no sample did)."""
        threshold = self.monitor.config.block_threshold
        cpu = gcs = None
        if tick is not None:
            _, duration, cpu, gcs = tick
        samples = block.all_samples() if block is not None else []
        if block is not None and duration < threshold and not any(
            s.cause != "idle" for s in samples
        ):
            return  # the loop only stopped or restarted while late: no block
        site, site_sample = _site_of(samples)
        detail: dict[str, str] = {}
        cause = self._cause(samples, site_sample, duration, cpu, gcs, threshold)
        detail["cause"] = cause
        if samples:
            detail["samples"] = str(len(samples))
            detail["detected_after"] = f"{samples[0].late:.3f}"
            detail["sampled"] = "; ".join(
                f"+{s.late:.3f}s {_frames.user_frame(s.stack) or (s.stack[0] if s.stack else '?')}"
                for s in samples
            )
        if cpu is not None and duration > 0:
            detail["loop_cpu"] = f"{min(cpu / duration, 1.0):.0%}"
        if gcs:
            detail["gc_seconds"] = f"{gcs:.3f}"
        stack: list[Frame] = []
        if site_sample is not None:
            stack = site_sample.stack
        elif samples:
            detail["loop_at"] = str(samples[0].stack[0]) if samples[0].stack else "?"
        labels = (block.labels if block is not None else None) or default_labels()
        reentry = block.reentry() if block is not None else ""
        if reentry:
            # The re-entry guard reports this stall itself (a reentry/cross_thread_run
            # incident with its duration): no second incident, no block counted. A DEBUG
            # line keeps what the samples showed.
            detail["reentry"] = reentry
            self._log_reentry_stall(probe, loop, labels, duration, site, stack, detail)
            return
        metrics = self.monitor.metrics
        if metrics is not None:
            metrics.child(
                metrics.event_loop_blocks_total, framework=labels.framework,
                handler=labels.handler,
            ).inc()
            metrics.child(
                metrics.event_loop_blocked_seconds_total, framework=labels.framework,
                handler=labels.handler,
            ).inc(duration)
        self.monitor.report(
            "blocked_loop", api="", action="", duration=duration, stack=stack, site=site,
            hint=_HINTS.get(cause), labels=labels, task=block.task if block else None,
            loop=loop, thread=probe.thread_name, detail=detail,
        )

    def _log_reentry_stall(
        self, probe: _Probe, loop: Any, labels: _context.Labels, duration: float,
        site: Frame | None, stack: list[Frame], detail: dict[str, str],
    ) -> None:
        from ._logging import logger

        if not logger.isEnabledFor(logging.DEBUG):
            return
        data = {
            "kind": "blocked_loop", "framework": labels.framework, "handler": labels.handler,
            "duration": duration, "thread": probe.thread_name, "detail": detail,
            "site": None if site is None else site._asdict(),
            "stack": [f._asdict() for f in _frames.without_own_frames(stack)],
        }
        try:
            logger.debug(
                "loopwatch: event loop stalled %.1f ms by %s (already reported as a re-entry)",
                duration * 1000, detail["reentry"], extra={"loopwatch": data},
            )
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("logging", exc)

    @staticmethod
    def _cause(
        samples: list[_Sample], site_sample: _Sample | None, duration: float,
        cpu: float | None, gcs: float | None, threshold: float,
    ) -> str:
        if gcs is not None and duration > 0 and gcs >= duration / 2:
            return "gc"
        causes = {s.cause for s in samples}
        if "import" in causes:
            return "import"
        busy = site_sample or next((s for s in samples if s.cause != "idle"), None)
        if busy is not None:
            if busy.cause == "lock":
                return "lock"
            # A thread waiting in a call burns no CPU; one computing burns it, though only a
            # share of the wall time when the machine is contended.
            if cpu is not None and cpu >= duration / 10:
                return "cpu"
            return "blocking_call"
        if samples or duration >= 1.5 * threshold:
            # All samples show the loop idle in its selector while late, or the watchdog
            # itself could not run to sample a long block: the process was starved.
            return "starved"
        return "unsampled"


# -- install -------------------------------------------------------------------------------

_active: _Watchdog | None = None
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    watchdog = _active
    if watchdog is not None:
        try:
            watchdog.after_fork_in_child()
        except Exception as exc:
            from ._monitor import internal_error

            internal_error("watchdog", exc)


def install(monitor: Monitor) -> Callable[[], None]:
    """Start the probes and the watchdog thread (unless ``watchdog=False``); return the undo."""
    global _active, _fork_hook_registered
    if not monitor.config.watchdog:
        return lambda: None
    watchdog = _Watchdog(monitor)
    gc.callbacks.append(_on_gc)
    _reentry.on_loop_start.append(watchdog.probe)
    _active = watchdog
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True
    watchdog.start_thread()
    running = asyncio._get_running_loop()
    if running is not None:
        watchdog.probe(running)

    def undo() -> None:
        global _active
        if watchdog.probe in _reentry.on_loop_start:
            _reentry.on_loop_start.remove(watchdog.probe)
        if _on_gc in gc.callbacks:
            gc.callbacks.remove(_on_gc)
        if _active is watchdog:
            _active = None
        watchdog.stop()

    return undo
