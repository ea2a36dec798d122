"""Where a hazard comes from: the code under test, the test's own scaffolding, or a library.

A test suite blocks its loop on purpose all the time: a test accepts on its own listening
socket, a conftest builds a large mock, a test body compresses 16 MB to have something to
send. None of that is what a maintainer will change. A blocking call inside the code under
test is. So each blocking hazard is judged by its *origin*: walking the stack outwards from
the call (or the sampled block), the first frame that is not a library's decides.

``code``
    The code under test: a module whose top-level package is in the scope. By default the
    scope is every package and module found at the top of the rootdir (and ``src/``), plus
    any source file outside the standard library and the installed packages (an app on
    ``PYTHONPATH``). ``loopwatch_scope = mypkg other`` replaces it with exactly those
    packages. The decision is by module name, so a project installed editable and the same
    project installed normally are judged alike.
``scaffolding``
    Test modules (``python_files``), ``conftest.py``, anything under a ``tests`` or
    ``test`` directory, and a package's own test support (modules named ``pytest_plugin``,
    ``test_utils`` or ``testing``, and those excluded with ``-name`` in the scope line:
    ``loopwatch_scope = aiohttp -aiohttp.web_log``): the test's own set-up, fixtures and
    helpers.
``library``
    The standard library, installed packages outside the scope, loopwatch itself.

Named call sites (``loopwatch_allow = aiohttp.cookiejar:CookieJar.load``) let a project
keep a documented sync API: a hazard with such a frame on its stack fails no test.

Classifying a file is string work only (no ``stat``, ``abspath`` or ``realpath``), cached
per file name: it runs inside the plugin's wrappers of blocking calls, which must not block
themselves.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import _frames
from .._frames import Frame

__all__ = ["CODE", "LIBRARY", "SCAFFOLDING", "AllowedSite", "Scope", "parse_allowed"]

CODE = "code"
SCAFFOLDING = "scaffolding"
LIBRARY = "library"

_OWN_PACKAGE = __name__.split(".")[0]
_TEST_DIRS = (os.sep + "tests" + os.sep, os.sep + "test" + os.sep)
# Top-level names of a rootdir that are never the code under test.
_NOT_CODE = frozenset({"tests", "test", "testing", "docs", "conftest", "setup", "noxfile"})
# Modules of a package that exist for its tests (its pytest plugin, its test client).
_TEST_SUPPORT = frozenset({"pytest_plugin", "test_utils", "testing", "conftest"})


class AllowedSite:
    """One ``module`` or ``module:qualname`` entry of ``loopwatch_allow``."""

    __slots__ = ("module", "qualname")

    def __init__(self, module: str, qualname: str) -> None:
        self.module = module
        self.qualname = qualname

    def matches(self, module: str, qualname: str) -> bool:
        """Whether a frame of ``module`` running ``qualname`` is this site."""
        if module != self.module:
            return False
        if not self.qualname:
            return True
        # Python 3.10 frames carry no qualified name: compare the last part then.
        return qualname == self.qualname or (
            "." not in qualname and self.qualname.rsplit(".", 1)[-1] == qualname
        )

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}" if self.qualname else self.module


def parse_allowed(text: str) -> tuple[AllowedSite, ...]:
    """``"pkg.mod:Class.method other.mod"`` -> sites; raises ``ValueError`` for a bad one."""
    sites = []
    for part in text.replace(",", " ").split():
        module, _, qualname = part.partition(":")
        names = [module, *qualname.split(".")] if qualname else [module]
        if not all(n.replace(".", "").replace("_", "a").isalnum() for n in names) or (
            ":" in part and not qualname
        ):
            raise ValueError(
                f"{part!r} is not a call site; write module or module:qualname, e.g. "
                "aiohttp.cookiejar:CookieJar.load"
            )
        sites.append(AllowedSite(module, qualname))
    return tuple(sites)


def project_packages(root: Path) -> frozenset[str]:
    """Top-level packages and modules of a project checkout (read once, at session start)."""
    names: set[str] = set()
    for base in (root, root / "src"):
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
                names.add(name)
            elif name.endswith(".py") and entry.is_file():
                names.add(name[:-3])
    return frozenset(n for n in names if n.isidentifier() and n not in _NOT_CODE)


class Scope:
    """Classifies source files as code under test, scaffolding or library; cached."""

    def __init__(
        self,
        packages: Iterable[str],
        explicit: bool,
        test_patterns: Sequence[str],
        allowed: Sequence[AllowedSite] = (),
        cwd: str = "",
        excluded: Sequence[str] = (),
    ) -> None:
        self.packages = frozenset(p for p in packages if p != _OWN_PACKAGE)
        self.excluded = tuple(excluded)  # modules of the scope that are test support
        self.explicit = explicit  # only these packages count (loopwatch_scope was set)
        self.allowed = tuple(allowed)
        self._patterns = tuple(test_patterns)
        self._cwd = cwd or os.getcwd()
        self._files: dict[str, str] = {}
        self._modules: dict[str, str] = {}  # filename -> module name, from sys.modules
        self._modules_seen = 0

    # -- files -----------------------------------------------------------------------------

    def classify(self, filename: str, module: str | None = None) -> str:
        """``code``, ``scaffolding`` or ``library`` for a source file (cached by name)."""
        known = self._files.get(filename)
        if known is not None:
            return known
        if module is None:
            module = self.module_of(filename)
        result = self._classify(filename, module)
        if len(self._files) < 50_000:
            self._files[filename] = result
        return result

    def _classify(self, filename: str, module: str) -> str:
        if filename.startswith("<"):
            return CODE if _frames.is_user_file(filename) and not self.explicit else LIBRARY
        path = filename if os.path.isabs(filename) else os.path.join(self._cwd, filename)
        path = os.path.normcase(os.path.normpath(path))
        top = module.split(".", 1)[0]
        if top == _OWN_PACKAGE and _frames.is_library_path(path):
            return LIBRARY
        name = os.path.basename(path)
        if (
            name == "conftest.py"
            or any(fnmatch.fnmatch(name, p) for p in self._patterns)
            or any(d in path for d in _TEST_DIRS)
            or top in ("tests", "test")
            or not _TEST_SUPPORT.isdisjoint(module.split("."))
            or any(module == e or module.startswith(e + ".") for e in self.excluded)
        ):
            return SCAFFOLDING
        if top in self.packages:
            return CODE
        if self.explicit or _frames.is_library_path(path):
            return LIBRARY
        return CODE

    def module_of(self, filename: str) -> str:
        """The module name of a loaded source file ("" when unknown)."""
        known = self._modules.get(filename)
        if known is None and len(sys.modules) != self._modules_seen:
            self._modules_seen = len(sys.modules)
            for name, mod in list(sys.modules.items()):
                file = getattr(mod, "__file__", None)
                if isinstance(file, str):
                    self._modules.setdefault(file, name)
            known = self._modules.get(filename)
        return known or ""

    # -- stacks ----------------------------------------------------------------------------

    def origin(self, stack: Sequence[Frame]) -> tuple[str, Frame | None]:
        """The class of the first non-library frame of a captured stack, and that frame."""
        for frame in stack:
            kind = self.classify(frame.file)
            if kind != LIBRARY:
                return kind, frame
        return LIBRARY, None

    def allowed_site(self, stack: Sequence[Frame]) -> AllowedSite | None:
        """The ``loopwatch_allow`` entry a frame of ``stack`` matches, if any."""
        if not self.allowed:
            return None
        for frame in stack:
            module = self.module_of(frame.file)
            for site in self.allowed:
                if site.matches(module, frame.function):
                    return site
        return None

    def live_origin(
        self, frame: types.FrameType | None, direct: bool
    ) -> tuple[str, types.FrameType | None, AllowedSite | None]:
        """Like :meth:`origin` on a live stack (with module and qualified names).

        ``direct``: only the first frame counts (a library's own file reads are its own).
        Also returns the allowed site met on the way, if any.
        """
        allowed = self.allowed
        while frame is not None:
            code = frame.f_code
            module = frame.f_globals.get("__name__")
            if not isinstance(module, str):
                module = ""
            if allowed:
                qualname = getattr(code, "co_qualname", code.co_name)
                for site in allowed:
                    if site.matches(module, qualname):
                        return LIBRARY, frame, site
            kind = self.classify(code.co_filename, module)
            if kind != LIBRARY or direct:
                return kind, frame, None
            frame = frame.f_back
        return LIBRARY, None, None
