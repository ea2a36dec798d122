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

import importlib.abc
import importlib.machinery
import sys
import threading
import types
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["ImportHook", "Patches"]

_MISSING = object()


class Patches:
    """The attributes replaced so far, to restore the identical originals."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, str, Any, Any]] = []  # owner, name, original, wrapper
        self._lock = threading.Lock()

    def patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> Any:
        """Set ``owner.name = make(current value)``; return the wrapper."""
        with self._lock:
            original = owner.__dict__.get(name, _MISSING)
            wrapper = make(getattr(owner, name))
            setattr(owner, name, wrapper)
            self._items.append((owner, name, original, wrapper))
            return wrapper

    def patched(self, owner: Any, name: str) -> bool:
        """Whether this registry has replaced ``owner.name`` (and not undone it)."""
        with self._lock:
            return any(o is owner and n == name for o, n, _, _ in self._items)

    def undo(self) -> list[str]:
        """Restore what is still ours, newest first; return what someone else replaced since."""
        left: list[str] = []
        with self._lock:
            items, self._items = self._items, []
        while items:
            owner, name, original, wrapper = items.pop()
            if owner.__dict__.get(name) is not wrapper:
                left.append(f"{getattr(owner, '__name__', owner)}.{name}")
                continue
            if original is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        return left


class _Loader(importlib.abc.Loader):
    def __init__(self, loader: Any, on_load: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._on_load = on_load

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._on_load(module)


class _Finder(importlib.abc.MetaPathFinder):
    """One finder for every module loopwatch waits for; calls back once it is executed."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[Callable[[types.ModuleType], None]]] = {}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.waiting:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _Loader(spec.loader, self._loaded)
        return spec

    def _loaded(self, module: types.ModuleType) -> None:
        for callback in list(self.waiting.get(module.__name__, ())):
            callback(module)


_finder = _Finder()
_finder_lock = threading.Lock()


class ImportHook:
    """Calls ``on_load(module)`` once a top-level module is imported (now, or later)."""

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
