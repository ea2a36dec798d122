"""Installs loopwatch at interpreter start, for ``loopwatch run``.

``loopwatch run`` puts this directory first on ``PYTHONPATH`` and the options in
``LOOPWATCH_*`` variables, so every Python process of the wrapped command (and its
children, which inherit the environment) runs this before any application code. Then the
next ``sitecustomize`` on the path runs, as it would have without loopwatch.

Nothing here may break the host interpreter: every failure is counted (when loopwatch
imports at all) and reported once on stderr, and the program starts as usual.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT_PID_VARIABLE = "LOOPWATCH_RUN_PID"


def _say(message: str) -> None:
    # No usable stderr: stay silent rather than break the program.
    with contextlib.suppress(Exception):
        sys.stderr.write(f"loopwatch: {message}\n")


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
    if _in_subinterpreter():
        return
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


def _chain() -> None:
    """Run the ``sitecustomize`` this one shadows, if there is one."""
    # Only the entries after this directory: a sitecustomize before it already ran (it is
    # the one that imported us, or it shadows us), and one that chains the same way would
    # otherwise call us back, forever.
    here = [i for i, p in enumerate(sys.path) if os.path.abspath(p or os.curdir) == _HERE]
    path = sys.path[here[0] + 1:] if here else list(sys.path)
    path = [p for p in path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
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
        _install()
except BaseException as exc:  # whatever happens, the program must start
    if isinstance(exc, KeyboardInterrupt):
        raise
    _say(f"not installed in this process: {exc!r}")
# Outside the guard on purpose: an error in the other sitecustomize is reported by `site`
# exactly as it would be without loopwatch.
if not _again:
    _chain()
