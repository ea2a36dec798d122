"""One registry for every attribute loopwatch replaces, so uninstall restores them exactly.

Every patcher (the re-entry guard, the loop-health probe, the task hooks, the adapters)
records its replacements in a :class:`Patches` and undoes them through it. Patches go on
classes and modules, never on a user's loop, task or app instance: an instance attribute
the user sets (``loop.call_exception_handler = Mock()``) still wins, as it would without
loopwatch.

uvloop may be imported after :func:`loopwatch.install`; :class:`ImportHook` runs a callback
when it is, so its ``Loop`` class is patched like the stdlib's.
"""

from __future__ import annotations

import functools
import importlib.machinery
import sys
import threading
import types
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

from . import _runtime
from ._compat import uvloop as uvl

__all__ = ["ImportHook", "Patches", "uvloop_patcher"]

_MISSING = object()


class _Entry:
    __slots__ = ("name", "owner", "saved", "wrapper")

    def __init__(self, owner: Callable[[], Any], name: str, saved: Any, wrapper: Any) -> None:
        self.owner = owner  # a weak reference where the owner allows one
        self.name = name
        self.saved = saved  # what the owner's own __dict__ held, or _MISSING
        self.wrapper = wrapper


class Patches:
    """The attributes replaced so far, to restore exactly what each owner held.

    Restoring puts back what the owner's own ``__dict__`` held (or removes the attribute
    when it held nothing, so an inherited one shows through again). A wrapper someone else
    replaced after us is left where it is and reported by :meth:`undo`. Owners are held
    weakly where they allow it: a patched object that goes away is forgotten.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[int, str], _Entry] = {}
        self._lock = threading.Lock()

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> Any:
        """Set ``owner.name = make(current value)``; return the wrapper."""
        return self.set(owner, name, make(getattr(owner, name)))

    def set(self, owner: Any, name: str, wrapper: Any) -> Any:
        """Set ``owner.name = wrapper`` (once per owner and name); return what is set."""
        key = (id(owner), name)
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                return entry.wrapper
            saved = vars(owner).get(name, _MISSING)
            setattr(owner, name, wrapper)
            items = self._items
            try:
                ref: Callable[[], Any] = weakref.ref(owner, lambda _: items.pop(key, None))
            except TypeError:  # no weak references to it: held until restored
                ref = functools.partial(_same, owner)
            items[key] = _Entry(ref, name, saved, wrapper)
            return wrapper

    def patched(self, owner: Any, name: str) -> bool:
        """Whether this registry has replaced ``owner.name`` (and not restored it)."""
        return (id(owner), name) in self._items

    def unpatch(self, owner: Any, name: str) -> None:
        """Restore one attribute now."""
        with self._lock:
            entry = self._items.pop((id(owner), name), None)
        if entry is not None:
            _put_back(owner, entry)

    def undo(self) -> list[str]:
        """Restore what is still ours, newest first; return what someone else replaced since."""
        with self._lock:
            entries = list(self._items.values())
            self._items.clear()
        left: list[str] = []
        for entry in reversed(entries):
            owner = entry.owner()
            if owner is not None and not _put_back(owner, entry):
                left.append(f"{getattr(owner, '__name__', type(owner).__name__)}.{entry.name}")
        return left


def _same(owner: Any) -> Any:
    return owner


def _put_back(owner: Any, entry: _Entry) -> bool:
    if vars(owner).get(entry.name) is not entry.wrapper:
        return False
    if entry.saved is _MISSING:
        delattr(owner, entry.name)
    else:
        setattr(owner, entry.name, entry.saved)
    return True


# The finder and the loader are plain classes: the import system asks only for the methods
# below, and ``importlib.abc`` would cost an interpreter that imports asyncio under
# ``loopwatch run`` ~20 ms more at start (it imports ``importlib.resources`` and pathlib).
class _Loader:
    def __init__(self, loader: Any, on_load: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._on_load = on_load

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_loader", "_on_load"):
            raise AttributeError(name)  # no recursion before __init__ (copy, pickle)
        # What else the module's loader offers (its source for tracebacks, its resources)
        # stays reachable through ``module.__loader__``.
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._on_load(module)


class _Finder:
    """One finder for every module loopwatch waits for; calls back once it is executed."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[Callable[[types.ModuleType], None]]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.waiting:
            return None
        # The spec the import system would find without us (an editable install's finder,
        # a zip file's, the path's): the module is loaded as ever, then we are told.
        spec: importlib.machinery.ModuleSpec | None = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return None
        spec.loader = cast(Any, _Loader(spec.loader, self._loaded))
        return spec

    def _loaded(self, module: types.ModuleType) -> None:
        for callback in list(self.waiting.get(module.__name__, ())):
            callback(module)


_finder = _Finder()
_finder_lock = threading.Lock()


class ImportHook:
    """Calls ``on_load(module)`` once a module is imported (now, or later)."""

    def __init__(self, name: str, on_load: Callable[[types.ModuleType], None]) -> None:
        self._name = name
        self._on_load = on_load

    def start(self) -> None:
        """Call back at once if the module is imported already, else when it is."""
        module = sys.modules.get(self._name)
        if module is not None:
            self._on_load(module)
            return
        with _finder_lock:
            _finder.waiting.setdefault(self._name, []).append(self._on_load)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)

    def stop(self) -> None:
        """Stop waiting for the import."""
        with _finder_lock:
            callbacks = _finder.waiting.get(self._name, [])
            if self._on_load in callbacks:
                callbacks.remove(self._on_load)
            if not callbacks:
                _finder.waiting.pop(self._name, None)
            if not _finder.waiting and _finder in sys.meta_path:
                sys.meta_path.remove(_finder)


def uvloop_patcher(
    patches: Patches, name: str, make: Callable[[Any], Any]
) -> Callable[[types.ModuleType], None]:
    """The :class:`ImportHook` callback for uvloop that patches ``name`` on its loop class
    with ``make`` (once per class, in ``patches``); a failure is loopwatch's, reported."""

    def patch_uvloop(module: types.ModuleType) -> None:
        cls = uvl.loop_class(module)
        if cls is not None and not patches.patched(cls, name):
            try:
                patches.patch(cls, name, make)
            except Exception as exc:
                _runtime.internal_error("uvloop", exc)

    return patch_uvloop
