"""Installs loopwatch in every Python process of ``loopwatch run``, once asyncio is imported.

``loopwatch run`` puts this directory first on ``PYTHONPATH`` and the options in
``LOOPWATCH_*`` variables, so every Python process of the wrapped command (and its
children, which inherit the environment) runs this before any application code. Then the
next ``sitecustomize`` on the path runs, as it would have without loopwatch.

At interpreter start this only adds an import hook (a finder at the head of
``sys.meta_path``): loopwatch is imported and installed the moment ``asyncio`` has finished
importing, before any code can start a loop with it (uvicorn, discord.py, anyio and
pytest-asyncio all import asyncio first). A Python that never imports asyncio (a build
step, a command-line tool, a worker that only computes) pays for this file alone. When the
program imports loopwatch itself, the install waits until that import is complete.

Nothing here may break the host interpreter: every failure is counted (when loopwatch
imports at all) and reported once on stderr, and the program starts as usual.
"""

from __future__ import annotations

import os
import sys

# Not `typing`: importing it would cost every Python process more than the rest of this
# file (type checkers treat this name as theirs wherever it is defined).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT_PID_VARIABLE = "LOOPWATCH_RUN_PID"


def _say(message: str) -> None:
    # No usable stderr: stay silent rather than break the program.
    try:  # noqa: SIM105 - contextlib costs every Python process an import
        sys.stderr.write(f"loopwatch: {message}\n")
    except Exception:
        pass


def _port_is_free(addr: str, port: int) -> bool:
    import socket

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((addr, port))
    except OSError:
        return False
    return True


def _in_subinterpreter() -> bool:
    """Whether this is a subinterpreter, answered before anything else is imported.

    loopwatch stays out of subinterpreters: they may not start daemon threads (3.12+), and
    every extra import there costs the program that created them.
    """
    import _thread

    allowed = getattr(_thread, "daemon_threads_allowed", None)  # 3.12+
    if allowed is not None and not allowed():
        return True
    for name in ("_interpreters", "_xxsubinterpreters"):  # 3.13+, 3.12
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        try:
            current, main = module.get_current(), module.get_main()
        except Exception:
            return False
        if isinstance(current, tuple):  # 3.13: (id, whence)
            current, main = current[0], main[0]
        return bool(current != main)
    return False


def _install() -> None:
    try:
        import loopwatch
    except ImportError as exc:
        _say(f"not installed in this process: {exc} (is loopwatch installed for "
             f"{sys.executable}?)")
        return
    try:
        from loopwatch._config import check_environment, load_config

        # `loopwatch run` named any unknown variable once already: no line from each child.
        check_environment(said=True)
        # The variables read by the one parser, as install() will read them.
        config = load_config({})
        port = config.metrics_port
        # A child of the wrapped command serves metrics only if nobody serves them yet.
        child = os.environ.get(_ROOT_PID_VARIABLE) != str(os.getpid())
        if port and child and not _port_is_free(config.metrics_addr, port):
            loopwatch.install(metrics_port=None)
        else:
            loopwatch.install()
    except loopwatch.ConfigError as exc:
        _count(exc)
        _say(f"not installed in this process: {exc}")
    except Exception as exc:
        _count(exc)
        from loopwatch._runtime import internal_error

        internal_error("sitecustomize", exc)


def _count(exc: BaseException) -> None:
    try:
        from loopwatch.metrics import get_metrics

        get_metrics().count_internal_error("sitecustomize")
    except Exception:  # counting is best effort; the message still goes out
        pass


_LOOPWATCH = "loopwatch"


def _initializing(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


class _InstallAfterAsyncio:
    """A meta-path finder that installs loopwatch once ``asyncio`` has been imported.

    It finds nothing itself: for ``asyncio`` and loopwatch's own modules it asks the other
    finders, and lets the loader run the module's code, then looks whether asyncio is
    imported and no module of loopwatch is half-imported (the program importing loopwatch,
    which imports asyncio): then it installs and leaves ``sys.meta_path``.
    """

    def __init__(self) -> None:
        self.installing = False

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if self.installing or not (
            name == "asyncio" or name == _LOOPWATCH or name.startswith("loopwatch.")
        ):
            return None
        try:
            spec: ModuleSpec | None = None
            for finder in list(sys.meta_path):
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            loader = getattr(spec, "loader", None)
            original = getattr(loader, "exec_module", None)
            if original is None:
                return spec
            hook = self

            def exec_module(module: object) -> None:
                # On the loader instance of this one module (its own, made for this spec),
                # and only while its code runs: nothing stays changed afterwards.
                try:
                    original(module)
                finally:
                    try:  # noqa: SIM105
                        del loader.exec_module  # type: ignore[union-attr]
                    except AttributeError:  # taken off meanwhile (a nested import)
                        pass
                hook.module_done(name)

            loader.exec_module = exec_module  # type: ignore[union-attr]
            return spec
        except Exception:  # never break an import: the program starts without the hook
            self.leave()
            return None

    def module_done(self, name: str) -> None:
        if self.installing or "asyncio" not in sys.modules:
            return
        if _initializing("asyncio") and name != "asyncio":
            return
        for other in list(sys.modules):
            if (other == _LOOPWATCH or other.startswith("loopwatch.")) and other != name \
                    and _initializing(other):
                return  # loopwatch is being imported: install when that import is done
        self.installing = True
        self.leave()
        try:
            _install()
        except Exception as exc:  # whatever happens, the program goes on
            _say(f"not installed in this process: {exc!r}")

    def leave(self) -> None:
        try:  # noqa: SIM105
            sys.meta_path.remove(self)
        except ValueError:  # not there (any more)
            pass


def _install_after_asyncio() -> None:
    if _in_subinterpreter():
        return
    if "asyncio" in sys.modules:  # imported before this ran (a .pth file): install now
        _install()
        return
    sys.meta_path.insert(0, _InstallAfterAsyncio())


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if there is one."""
    # Only the entries after this directory: a sitecustomize before it already ran (it is
    # the one that imported us, or it shadows us), and one that chains the same way would
    # otherwise call us back, forever.
    here = [i for i, p in enumerate(sys.path) if os.path.abspath(p or os.curdir) == _HERE]
    path = sys.path[here[0] + 1:] if here else list(sys.path)
    path = [p for p in path if os.path.abspath(p or os.curdir) != _HERE]
    # The path-based finder of importlib.machinery, taken from the import system the
    # interpreter already loaded: importing importlib (and warnings) would cost every
    # process more than this whole file. importlib.util likewise, only when needed.
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if finder is None:
        import importlib.machinery

        finder = importlib.machinery.PathFinder
    spec = finder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    import importlib.util

    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


# Another sitecustomize that chains to "the next one" may run this file a second time in the
# same process: the first run did everything.
_ONCE = "_loopwatch_sitecustomize_ran"
_again = _ONCE in sys.modules
sys.modules.setdefault(_ONCE, sys.modules[__name__])

try:
    if not _again:
        _install_after_asyncio()
except BaseException as exc:  # whatever happens, the program must start
    if isinstance(exc, KeyboardInterrupt):
        raise
    _say(f"not installed in this process: {exc!r}")
# Outside the guard on purpose: an error in the other sitecustomize is reported by `site`
# exactly as it would be without loopwatch.
if not _again:
    _chain()
