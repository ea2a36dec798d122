"""prometheus_client internals: registered collectors, label names, the histogram fast path.

Checked against prometheus-client 0.17–0.22. Canaries in ``tests/test_compat.py``.
"""

from __future__ import annotations

from bisect import bisect_left as _bisect_left
from collections.abc import Callable
from typing import Any

try:
    from prometheus_client.values import MutexValue as _MutexValue
except ImportError:  # pragma: no cover - a prometheus-client without it
    _MutexValue = None  # type: ignore[assignment,misc]

__all__ = [
    "add_counts", "bucket_bounds", "exposed_name", "fast_observe", "label_names",
    "label_values", "registered",
]


def registered(registry: Any, name: str) -> Any:
    """The collector registered on ``registry`` under sample name ``name``, or ``None``.

    prometheus-client keys collectors by every sample name (``_names_to_collectors``);
    a counter ``x_total`` is found under ``x_total`` and under ``x``.
    """
    names: dict[str, Any] = getattr(registry, "_names_to_collectors", {})
    return names.get(name)


def label_names(metric: Any) -> tuple[str, ...]:
    """The label names a metric was declared with (``_labelnames``)."""
    return tuple(getattr(metric, "_labelnames", ()))


def label_values(child: Any) -> tuple[str, ...]:
    """The label values of a labelled child (``_labelvalues``); empty for anything else.

    A child wrapped by loopwatch (``__wrapped__``, the OpenTelemetry mirror) gives its own.
    """
    return tuple(getattr(getattr(child, "__wrapped__", child), "_labelvalues", ()))


def bucket_bounds(metric: Any) -> tuple[float, ...]:
    """A histogram's bucket upper bounds, ``+Inf`` last (``_upper_bounds``); empty if unknown."""
    bounds = getattr(metric, "_upper_bounds", None)
    return tuple(bounds) if isinstance(bounds, list) else ()


def exposed_name(metric: Any) -> str:
    """The name a metric is exposed under (counters gain ``_total``)."""
    name: str = metric._name
    return name + ("_total" if metric._type == "counter" else "")


def fast_observe(child: Any) -> Callable[[float], None]:
    """``child.observe`` without its per-call checks, for a prometheus-client histogram child.

    The same arithmetic as ``Histogram.observe`` (the first bucket whose bound is at least
    the value, then the sum) on the child's own value objects, so exposition, multiprocess
    files and locking stay prometheus-client's. For its in-process values (a float under a
    lock each) the additions are made here under those locks, without two more calls. Any
    other child (a null metric, internals that differ) gets its own ``observe``.
    """
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if (
        type(bounds) is not list or type(buckets) is not list or len(bounds) != len(buckets)
        or not bounds or bounds[-1] != float("inf") or total is None or not hasattr(total, "inc")
        or not all(hasattr(bucket, "inc") for bucket in buckets)
    ):
        observe: Callable[[float], None] = child.observe
        return observe
    frozen = tuple(bounds)
    values = (*buckets, total)
    if _MutexValue is not None and all(type(value) is _MutexValue for value in values) and all(
        isinstance(getattr(value, "_value", None), float)
        and hasattr(getattr(value, "_lock", None), "acquire")
        and hasattr(value._lock, "release")
        for value in values
    ):
        total_lock = total._lock

        def fast_mutex(amount: float) -> None:
            # acquire/release under try rather than a with-block: the same guarantee, at
            # half the cost of the context-manager protocol (it runs on every request).
            bucket = buckets[_bisect_left(frozen, amount)]
            lock = bucket._lock
            lock.acquire()
            try:
                bucket._value += 1.0
            finally:
                lock.release()
            total_lock.acquire()
            try:
                total._value += amount
            finally:
                total_lock.release()

        return fast_mutex

    def fast(amount: float) -> None:
        buckets[_bisect_left(frozen, amount)].inc(1)
        total.inc(amount)

    return fast




def add_counts(child: Any, values: list[float]) -> None:
    """Add bucket counts to a histogram child: ``values`` is ``[count per bucket (the last
    for +Inf)..., sum]`` over the child's own buckets (pending metrics handed over).

    On the child's bucket and sum values (``_buckets``, ``_sum``), so the counts land
    whole; a child without them (a null metric) gets one observation per count, at the
    bucket's bound (the sum then is approximate).
    """
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if (
        type(buckets) is list and len(buckets) == len(values) - 1 and total is not None
        and hasattr(total, "inc") and all(hasattr(bucket, "inc") for bucket in buckets)
    ):
        for bucket, count in zip(buckets, values, strict=False):
            if count:
                bucket.inc(count)
        total.inc(values[-1])
        return
    finite = [bound for bound in bucket_bounds(child) if bound != float("inf")] or [0.0]
    for index, count in enumerate(values[:-1]):
        at = finite[min(index, len(finite) - 1)]
        for _ in range(int(count)):
            child.observe(at)
