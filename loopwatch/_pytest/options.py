"""The plugin's options: command line, ini file, the marker's ``allow`` list; validated once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from .._config import parse
from .._errors import ConfigError
from .._incidents import KINDS
from .blocking_calls import CATEGORIES
from .blocking_calls import KIND as BLOCKING_CALL
from .scope import AllowedSite, parse_allowed

__all__ = [
    "DEFAULT_FAIL_ON",
    "DEFAULT_THRESHOLD",
    "KNOWN_KINDS",
    "Settings",
    "add",
    "allowed_kinds",
    "read",
]

PENDING_TASK = "pending_task"  # a test left tasks it created pending (the plugin's check)
KNOWN_KINDS = tuple(
    dict.fromkeys((*(k for k in KINDS if k != "internal"), BLOCKING_CALL, PENDING_TASK))
)
DEFAULT_FAIL_ON = (
    "reentry", "blocked_loop", "unretrieved_exception", "never_awaited", BLOCKING_CALL,
    PENDING_TASK,
)
# Longer than a service's default (0.1 s): test machines are shared and slower, and a clean
# suite must pass as it did. Blocking *calls* are caught at any length by the detector.
DEFAULT_THRESHOLD = 0.25
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the plugin does in this session."""

    fail_on: frozenset[str]
    block_threshold: float
    on_reentry: str
    blocking: tuple[str, ...]
    scope: tuple[str, ...] = ()  # packages of the code under test; () = found in the rootdir
    scope_excluded: tuple[str, ...] = ()  # modules of those packages that are test support
    allow: tuple[AllowedSite, ...] = ()  # named call sites whose hazards fail no test


def add(parser: pytest.Parser) -> None:
    """Declare the options (each with an ini twin, the command line wins)."""
    group = parser.getgroup("loopwatch", "loopwatch: fail tests on event-loop hazards")
    group.addoption(
        "--loopwatch", action="store_true", default=None, dest="loopwatch",
        help="install loopwatch for the session and fail tests that cause event-loop "
        "hazards (ini: loopwatch = true).",
    )
    group.addoption(
        "--no-loopwatch", action="store_false", dest="loopwatch",
        help="do not enable the plugin, whatever the ini file says.",
    )
    group.addoption(
        "--loopwatch-fail-on", dest="loopwatch_fail_on", metavar="KINDS", default=None,
        help="comma-separated incident kinds that fail a test, 'all' or 'none' (default: "
        f"{','.join(DEFAULT_FAIL_ON)}); accepted kinds: {', '.join(KNOWN_KINDS)}.",
    )
    group.addoption(
        "--loopwatch-block-threshold", dest="loopwatch_block_threshold", metavar="SECONDS",
        default=None,
        help=f"a loop blocked this long fails the test (default: {DEFAULT_THRESHOLD}).",
    )
    group.addoption(
        "--loopwatch-on-reentry", dest="loopwatch_on_reentry", metavar="POLICY", default=None,
        help="re-entry policy during tests: raise (default: the original RuntimeError "
        "surfaces), offload or reenter.",
    )
    group.addoption(
        "--loopwatch-blocking", dest="loopwatch_blocking", metavar="CATEGORIES", default=None,
        help="blocking calls on the loop thread that count, comma-separated, or 'none' "
        f"(default: {','.join(CATEGORIES)}).",
    )
    parser.addini("loopwatch", "enable the loopwatch plugin", type="bool", default=False)
    parser.addini("loopwatch_fail_on", "incident kinds that fail a test", default="")
    parser.addini("loopwatch_block_threshold", "blocked-loop threshold in seconds", default="")
    parser.addini("loopwatch_on_reentry", "re-entry policy during tests", default="")
    parser.addini("loopwatch_blocking", "blocking-call categories that count", default="")
    parser.addini(
        "loopwatch_scope",
        "packages of the code under test whose blocking hazards fail tests (default: the "
        "packages and modules at the top of the rootdir)",
        default="",
    )
    parser.addini(
        "loopwatch_allow",
        "call sites (module or module:qualname) whose hazards fail no test, e.g. "
        "aiohttp.cookiejar:CookieJar.load",
        default="",
    )


def _value(config: pytest.Config, name: str) -> str:
    given = config.getoption(name)
    if given is not None:
        return str(given).strip()
    return str(config.getini(name) or "").strip()


def _source(config: pytest.Config, name: str) -> str:
    """How the user wrote option ``name``: the flag when one was given, else the ini key."""
    if config.getoption(name) is not None:
        return "--" + name.replace("_", "-")
    return name


def _named(config: pytest.Config, name: str, error: pytest.UsageError) -> pytest.UsageError:
    """``error`` (worded with the ini key) reworded with the flag the user actually gave."""
    source = _source(config, name)
    if source == name:
        return error
    text = str(error).replace(f"{name}=", f"{source}=").replace(f"{name}:", f"{source}:")
    return pytest.UsageError(text)


def _names(text: str) -> list[str]:
    return [part.strip().lower() for part in text.replace(" ", ",").split(",") if part.strip()]


def _fail_on(text: str) -> frozenset[str]:
    if not text:
        return frozenset(DEFAULT_FAIL_ON)
    names = _names(text)
    if names == ["all"]:
        return frozenset(KNOWN_KINDS)
    if names == ["none"]:
        return frozenset()
    unknown = [n for n in names if n not in KNOWN_KINDS]
    if unknown:
        raise pytest.UsageError(
            f"loopwatch_fail_on: unknown kind(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(KNOWN_KINDS)}, or 'all' / 'none'"
        )
    return frozenset(names)


def _parsed(option: str, name: str, text: str) -> Any:
    # The core's one parser, with the plugin's name for the value in its message.
    try:
        return parse(option, text, name=name)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def _threshold(text: str) -> float:
    if not text:
        return DEFAULT_THRESHOLD
    return float(_parsed("block_threshold", "loopwatch_block_threshold", text))


def _policy(text: str) -> str:
    return str(_parsed("on_reentry", "loopwatch_on_reentry", text or "raise"))


def _blocking(text: str) -> tuple[str, ...]:
    if not text:
        return CATEGORIES
    names = _names(text)
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in CATEGORIES]
    if unknown:
        raise pytest.UsageError(
            f"loopwatch_blocking: unknown categories {', '.join(unknown)}; accepted: "
            f"{', '.join(CATEGORIES)}, or 'none'"
        )
    return tuple(n for n in CATEGORIES if n in names)


def read(config: pytest.Config) -> Settings | None:
    """The session's settings, or ``None`` when the plugin is not enabled.

    Raises :class:`pytest.UsageError` for a bad value, naming the option.
    """
    enabled = config.getoption("loopwatch")
    if enabled is None:
        ini = config.getini("loopwatch")
        enabled = ini if isinstance(ini, bool) else str(ini).strip().lower() in _TRUE
    if not enabled:
        return None
    try:
        return Settings(
            fail_on=_fail_on(_value(config, "loopwatch_fail_on")),
            block_threshold=_threshold(_value(config, "loopwatch_block_threshold")),
            on_reentry=_policy(_value(config, "loopwatch_on_reentry")),
            blocking=_blocking(_value(config, "loopwatch_blocking")),
            scope=_scope(str(config.getini("loopwatch_scope") or ""))[0],
            scope_excluded=_scope(str(config.getini("loopwatch_scope") or ""))[1],
            allow=_allow(str(config.getini("loopwatch_allow") or "")),
        )
    except pytest.UsageError as error:
        for name in (
            "loopwatch_fail_on", "loopwatch_block_threshold", "loopwatch_on_reentry",
            "loopwatch_blocking",
        ):
            if str(error).startswith(name):
                raise _named(config, name, error) from None
        raise


def _scope(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"mypkg -mypkg.testing"`` -> (packages, excluded modules)."""
    names = tuple(text.replace(",", " ").split())
    bad = [n for n in names if not all(p.isidentifier() for p in n.lstrip("-").split("."))]
    if bad:
        raise pytest.UsageError(
            f"loopwatch_scope: {', '.join(bad)} is not a package name; list the top-level "
            "packages of the code under test (and -module for test support inside them), "
            "e.g. loopwatch_scope = mypkg -mypkg.testing"
        )
    packages = tuple(dict.fromkeys(n.split(".")[0] for n in names if not n.startswith("-")))
    return packages, tuple(n[1:] for n in names if n.startswith("-"))


def _allow(text: str) -> tuple[AllowedSite, ...]:
    try:
        return parse_allowed(text)
    except ValueError as exc:
        raise pytest.UsageError(f"loopwatch_allow: {exc}") from None


def allowed_kinds(item: pytest.Item) -> frozenset[str]:
    """The kinds the ``loopwatch`` markers on ``item`` (and its class, module) allow.

    Raises :class:`ValueError` for a marker that names an unknown kind, so a typo cannot
    silently allow nothing.
    """
    allowed: set[str] = set()
    for mark in item.iter_markers("loopwatch"):
        unexpected = (set(mark.kwargs) - {"allow"}) or mark.args
        if unexpected:
            raise ValueError(
                f"{item.nodeid}: @pytest.mark.loopwatch takes only allow=[kinds]; got "
                f"{mark.args!r} {sorted(mark.kwargs)!r}"
            )
        value = mark.kwargs.get("allow", ())
        names = [value] if isinstance(value, str) else list(value)
        for name in names:
            if name == "all":
                allowed.update(KNOWN_KINDS)
            elif name in KNOWN_KINDS:
                allowed.add(name)
            else:
                raise ValueError(
                    f"{item.nodeid}: @pytest.mark.loopwatch(allow=...) names unknown kind "
                    f"{name!r}; accepted: {', '.join(KNOWN_KINDS)}, or 'all'"
                )
    return frozenset(allowed)
