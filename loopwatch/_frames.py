"""Stack capture and the user-frame rule.

Only code attributes are read (file, line, function name): never ``inspect``, never
``linecache`` and never local variables, so capture is cheap, safe from another thread and
cannot leak secrets held in locals.
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
import types
from collections.abc import Callable
from typing import NamedTuple

from ._compat import cpython

__all__ = [
    "Frame",
    "capture_stack",
    "is_library_path",
    "is_own_file",
    "is_user_file",
    "library_prefixes",
    "stack_from_frame",
    "user_frame",
    "without_own_frames",
]


class Frame(NamedTuple):
    """One frame of a captured stack."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def _normalise(path: str) -> str:
    """The one form every path is compared in: absolute, case-folded where the OS folds."""
    return os.path.normcase(os.path.abspath(path))


def _library_prefixes() -> tuple[str, ...]:
    import sysconfig  # here: the first file judged pays for it, not every install

    paths: set[str] = set()
    # "scripts": the bin/Scripts directory of the environment, where pip writes the
    # console-script launchers (venv/bin/uvicorn, venv/bin/pytest). A launcher is the
    # outermost frame of every stack it starts, and is an installed package's code.
    scheme = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts"):
        if key in scheme:
            paths.add(scheme[key])
    for scheme_var in ("base_prefix", "exec_prefix", "base_exec_prefix"):
        prefix = getattr(sys, scheme_var, "")
        if prefix:
            paths.add(os.path.join(prefix, "lib"))
    for prefix in {sys.prefix, getattr(sys, "base_prefix", "")}:
        if prefix:
            paths.add(os.path.join(prefix, "Scripts" if os.name == "nt" else "bin"))
    # Some embedded interpreters have no site.getsitepackages.
    with contextlib.suppress(AttributeError):
        paths.update(site.getsitepackages())
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        paths.add(user_site)
    paths.add(_OWN_DIR)
    cleaned = {_normalise(p) + os.sep for p in paths if p}
    return tuple(sorted(cleaned, key=len, reverse=True))


_prefixes: list[tuple[str, ...]] = []  # the library prefixes, found on first use


def library_prefixes() -> tuple[str, ...]:
    """Where the stdlib, installed packages and loopwatch live (found on the first call)."""
    if not _prefixes:
        _prefixes.append(_library_prefixes())
    return _prefixes[0]


_OWN_PREFIX = _normalise(_OWN_DIR) + os.sep
_own_file_cache: dict[str, bool] = {}
_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_user_file_cache: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    """True when ``filename`` is the user's code: not the stdlib, site-packages or loopwatch."""
    known = _user_file_cache.get(filename)
    if known is not None:
        return known
    if filename.startswith("<"):
        # <frozen importlib._bootstrap> and the like are not the user's. IPython cells
        # ("<ipython-input-...>"), `python -c` code ("<string>", as exec() without a file
        # name) and a script piped into `python -` ("<stdin>") are.
        result = filename.startswith("<ipython-input") or filename in ("<string>", "<stdin>")
    else:
        path = _normalise(filename)
        result = not path.startswith(library_prefixes()) and not any(m in path for m in _MARKERS)
    if len(_user_file_cache) < 10_000:
        _user_file_cache[filename] = result
    return result


def is_library_path(path: str) -> bool:
    """Whether an absolute, normalised ``path`` is the stdlib's, an installed package's or
    loopwatch's own: string checks only (no ``abspath``, no file system), for hot paths."""
    return path.startswith(library_prefixes()) or any(m in path for m in _MARKERS)


def stack_from_frame(frame: types.FrameType | None, limit: int = 64) -> list[Frame]:
    """Walk ``frame`` outwards (innermost first), at most ``limit`` frames."""
    out: list[Frame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append(Frame(code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    return out


def capture_stack(
    skip: int = 0, limit: int = 64, getframe: Callable[[int], types.FrameType] = cpython.getframe
) -> list[Frame]:
    """The current thread's stack, innermost first, without this function and ``skip`` more."""
    try:
        frame: types.FrameType | None = getframe(skip + 1)
    except ValueError:
        return []
    return stack_from_frame(frame, limit)


def is_own_file(filename: str) -> bool:
    """True when ``filename`` is one of loopwatch's own modules."""
    known = _own_file_cache.get(filename)
    if known is None:
        known = not filename.startswith("<") and _normalise(filename).startswith(_OWN_PREFIX)
        if len(_own_file_cache) < 10_000:
            _own_file_cache[filename] = known
    return known


def without_own_frames(stack: list[Frame]) -> list[Frame]:
    """``stack`` without loopwatch's own frames (its wrappers sit between user frames)."""
    return [f for f in stack if not is_own_file(f.file)]


def user_frame(stack: list[Frame] | tuple[Frame, ...]) -> Frame | None:
    """The innermost frame of the user's code, or ``None`` when the stack has none."""
    for frame in stack:
        if is_user_file(frame.file):
            return frame
    return None
