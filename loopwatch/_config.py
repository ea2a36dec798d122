"""Options: the one table, the one parser, the one frozen :class:`Config`.

Every door into loopwatch's configuration comes through here: the keywords of
:func:`loopwatch.install` and ``Monitor.reconfigure``, the ``LOOPWATCH_*`` environment
variables, the flags of ``loopwatch run``, the pytest plugin's options, the discord
adapter's arguments and the ``sitecustomize`` of ``loopwatch run``. Each option has one row
in :data:`OPTIONS` (name, variable, type, default, accepted values, a line of doc, its
parser), so a bad value gets the same message whichever door it came through, and the
configuration reference can be generated from the rows (:func:`option_rows`).
Keywords win over the environment; the environment wins over the defaults.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, get_args

from ._context import FRAMEWORKS
from ._errors import ConfigError
from ._logging import logger
from ._pending_metrics import PrivateRegistry

__all__ = [
    "OPTIONS",
    "POLICIES",
    "UNSET",
    "Config",
    "LogFormat",
    "Option",
    "Policy",
    "Unset",
    "check_environment",
    "load_config",
    "option_rows",
    "parse",
    "parse_seconds",
]

Policy = Literal["auto", "offload", "raise", "reenter"]
LogFormat = Literal["text", "json"]
POLICIES: tuple[str, ...] = get_args(Policy)
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
# LOOPWATCH_* variables that are not options: set by ``loopwatch run`` for its children.
INTERNAL_VARIABLES = frozenset({"LOOPWATCH_RUN_PID"})


class Unset(enum.Enum):
    """The type of :data:`UNSET`, the default of every keyword: "not given here"."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


# A keyword left at UNSET takes its value from the environment, else the default (at
# install), or keeps the monitor's current value (on reconfigure).
UNSET: Final = Unset.UNSET


# -- parsers: (name the value was given under, value) -> the value, or ConfigError ----------


def _choice(accepted: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in accepted:
            raise ConfigError(
                f"{name}={value!r} is not accepted; use one of: {', '.join(accepted)}"
            )
        return str(text)

    return parse


def parse_seconds(name: str, value: Any) -> float:
    """A positive, finite number of seconds (also for adapters' own arguments)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name}={value!r} is not a number of seconds; use a positive number such as 0.1"
        ) from None
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigError(
            f"{name}={value!r} is not accepted; use a positive, finite number of seconds"
        )
    return number


def _seconds_or_off(name: str, value: Any) -> float:
    """Seconds, or ``0`` for off."""
    if not isinstance(value, bool) and str(value).strip() in ("0", "0.0"):
        return 0.0
    return parse_seconds(name, value)


def _port(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a port; use an integer from 0 (a free port) to 65535"
        ) from None
    if isinstance(value, bool) or not 0 <= port <= 65535:
        raise ConfigError(
            f"{name}={value!r} is not a port; use an integer from 0 (a free port) to 65535"
        )
    return port


def _addr(name: str, value: Any) -> str:
    # An IP literal, or "localhost": a host name would be looked up in DNS at bind time and
    # might resolve to an address nobody meant to expose.
    text = value.strip() if isinstance(value, str) else None
    if text is not None and text.lower() == "localhost":
        return "localhost"
    import ipaddress  # here: only a given address pays for it, not every start

    try:
        return str(ipaddress.ip_address(text or ""))
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not accepted; use an IP address such as 127.0.0.1 or ::1 "
            "(0.0.0.0 or :: for every interface), or localhost"
        ) from None


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not accepted; use one of: 1, 0, true, false, yes, no")


def _count(name: str, value: Any) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not accepted; use a positive integer") from None
    if isinstance(value, bool) or number < 1:
        raise ConfigError(f"{name}={value!r} is not accepted; use a positive integer")
    return number


def _meter_provider(name: str, value: Any) -> Any:
    if value is not None and not hasattr(value, "get_meter"):
        raise ConfigError(f"{name}={value!r} is not an OpenTelemetry MeterProvider")
    return value


def _registry(name: str, value: Any) -> Any:
    if isinstance(value, PrivateRegistry):
        return value  # the pytest plugin's: a registry of its own, made if ever needed
    if value is not None and not (hasattr(value, "register") and hasattr(value, "collect")):
        raise ConfigError(f"{name}={value!r} is not a prometheus_client CollectorRegistry")
    return value


# -- the table -----------------------------------------------------------------------------


class Option:
    """One option: its keyword, its variable, what it takes and what it does."""

    # Plain classes here, not dataclasses: every install imports this module, and making a
    # dataclass costs about a millisecond each.
    __slots__ = ("accepted", "default", "doc", "name", "parse", "type", "variable")

    def __init__(
        self,
        name: str,
        variable: str | None,  # None: a keyword only (an object cannot come from the environment)
        type: str,  # the column's name in the reference
        default: Any,
        accepted: str,
        doc: str,
        parse: Callable[[str, Any], Any],
    ) -> None:
        self.name = name
        self.variable = variable
        self.type = type
        self.default = default
        self.accepted = accepted
        self.doc = doc
        self.parse = parse

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.variable!r}, default={self.default!r})"


_TABLE = (
    Option("on_reentry", "LOOPWATCH_ON_REENTRY", "str", "offload", " | ".join(POLICIES),
           "What a nested run on a running loop does: run on a worker thread (offload), on "
           "the same loop (reenter), either as fits (auto), or raise the RuntimeError.",
           _choice(POLICIES)),
    Option("block_threshold", "LOOPWATCH_BLOCK_THRESHOLD", "float", 0.1, "seconds > 0",
           "A loop busy this long without waiting for I/O is reported as blocked.",
           parse_seconds),
    Option("log_format", "LOOPWATCH_LOG_FORMAT", "str", "text", " | ".join(LOG_FORMATS),
           "Log lines as text, or one JSON object per line.", _choice(LOG_FORMATS)),
    Option("metrics_port", "LOOPWATCH_METRICS_PORT", "int | None", None,
           "0-65535 (0: a free port), or unset",
           "Serve /metrics on this port from a thread of its own (off when unset).", _port),
    Option("metrics_addr", "LOOPWATCH_METRICS_ADDR", "str", "127.0.0.1",
           "an IP address, or localhost",
           "The address the metrics server listens on (loopback unless told otherwise).", _addr),
    Option("disable", "LOOPWATCH_DISABLE", "bool", False, "1 | 0 | true | false | yes | no",
           "Make install() do nothing (adapters then stay out of the way too).", _flag),
    Option("offload_timeout", "LOOPWATCH_OFFLOAD_TIMEOUT", "float", 30.0, "seconds > 0",
           "Upper bound on every offloaded or marshalled call.", parse_seconds),
    Option("label_cap", "LOOPWATCH_LABEL_CAP", "int", 100, "an integer >= 1",
           "Distinct handler label values per metric before new ones fold into __other__.",
           _count),
    Option("default_framework", "LOOPWATCH_FRAMEWORK", "str", "none",
           " | ".join(sorted(FRAMEWORKS)),
           "The framework label of work that no adapter labelled.",
           _choice(tuple(sorted(FRAMEWORKS)))),
    Option("watchdog", "LOOPWATCH_WATCHDOG", "bool", True, "1 | 0 | true | false | yes | no",
           "Watch loops for blocks and sample the blocked thread (the lag probe included).",
           _flag),
    Option("lag_tick", "LOOPWATCH_LAG_TICK", "float", 0.02, "seconds > 0",
           "At most one loop-lag sample per loop per this many seconds.", parse_seconds),
    Option("stuck_after", "LOOPWATCH_STUCK_AFTER", "float", 10.0, "seconds > 0, or 0 (off)",
           "A handler (request, event, command, tasks-loop iteration, handler_context block) "
           "still waiting on the same thing this long is reported as stuck, with its await "
           "chain.", _seconds_or_off),
    Option("tasks_endpoint", "LOOPWATCH_TASKS_ENDPOINT", "bool", False,
           "1 | 0 | true | false | yes | no",
           "Serve the live task view at <metrics path>/tasks (JSON or text), behind the "
           "metrics token when one is set.", _flag),
    Option("otel", "LOOPWATCH_OTEL", "bool", False, "1 | 0 | true | false | yes | no",
           "Add incidents as events to the current OpenTelemetry span and mirror the metrics "
           "as OTel instruments (needs loopwatch[otel]; nothing is imported while off).",
           _flag),
    Option("registry", None, "CollectorRegistry | None", None,
           "a prometheus_client CollectorRegistry, or None",
           "Where the metrics go (None: prometheus_client's default registry).", _registry),
    Option("meter_provider", None, "MeterProvider | None", None,
           "an OpenTelemetry MeterProvider, or None",
           "Where the OTel instruments go with otel on (None: the global provider).",
           _meter_provider),
)

OPTIONS: Final[Mapping[str, Option]] = {option.name: option for option in _TABLE}
_BY_VARIABLE = {o.variable: o for o in _TABLE if o.variable is not None}


def option_rows() -> list[dict[str, str]]:
    """The options as rows of text (name, variable, type, default, accepted, doc), for docs."""
    return [
        {
            "name": o.name,
            "variable": o.variable or "",
            "type": o.type,
            "default": repr(o.default),
            "accepted": o.accepted,
            "doc": o.doc,
        }
        for o in _TABLE
    ]


_DEFAULTS = {option.name: option.default for option in _TABLE}


class Config:
    """The effective configuration of an installed monitor (defaults from :data:`OPTIONS`).

    Read-only: :meth:`replace` makes a changed copy. Equal when every option is.
    """

    __slots__ = (
        "block_threshold", "default_framework", "disable", "label_cap", "lag_tick",
        "log_format", "meter_provider", "metrics_addr", "metrics_port", "offload_timeout",
        "on_reentry", "otel", "registry", "stuck_after", "tasks_endpoint", "watchdog",
    )

    on_reentry: str
    block_threshold: float
    log_format: str
    metrics_port: int | None
    metrics_addr: str
    disable: bool
    offload_timeout: float
    label_cap: int
    default_framework: str
    watchdog: bool
    lag_tick: float
    stuck_after: float
    tasks_endpoint: bool
    otel: bool
    registry: Any  # a CollectorRegistry; None means the default one
    meter_provider: Any  # None means OTel's global provider

    def __init__(self, **values: Any) -> None:
        unknown = values.keys() - _DEFAULTS.keys()
        if unknown:
            raise TypeError(f"Config() got unknown option(s): {', '.join(sorted(unknown))}")
        for name, default in _DEFAULTS.items():
            object.__setattr__(self, name, values.get(name, default))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Config is read-only (use replace()): cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Config is read-only: cannot delete {name!r}")

    def _values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _DEFAULTS}

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` (option names as keywords; values already parsed)."""
        return Config(**{**self._values(), **changes})

    def __eq__(self, other: object) -> bool:
        if type(other) is not Config:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(tuple(self._values().values()))

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in self._values().items()) + ")"

    def public_dict(self) -> dict[str, Any]:
        """The options as plain values (objects by type only), for ``doctor`` and logs."""
        # Shallow: a deep copy of the registry or the meter provider would copy their locks.
        out = self._values()
        out["registry"] = "default" if self.registry is None else type(self.registry).__name__
        out["meter_provider"] = (
            "global" if self.meter_provider is None else type(self.meter_provider).__name__
        )
        return out


# -- parsing -------------------------------------------------------------------------------


def parse(option: str, value: Any, *, name: str | None = None) -> Any:
    """Parse ``value`` for ``option``; a bad one raises :class:`ConfigError` naming ``name``.

    ``name`` is what the user wrote (a flag, a variable); the option's name by default.
    """
    return OPTIONS[option].parse(name or option, value)


def load_config(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None, base: Config | None = None
) -> Config:
    """Build a :class:`Config` from keywords over environment over ``base`` (or defaults).

    Keywords whose value is :data:`UNSET` are not given. Raises :class:`ConfigError` naming
    the keyword or variable for any bad value or unknown keyword. The environment is read
    only when there is no ``base`` (an install, not a reconfigure).
    """
    given = {k: v for k, v in options.items() if v is not UNSET}
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(OPTIONS)}"
        )
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in _TABLE:
        if option.name in given:
            values[option.name] = option.parse(option.name, given[option.name])
        elif base is None and option.variable is not None and option.variable in env:
            values[option.name] = option.parse(option.variable, env[option.variable])
    return (base if base is not None else Config()).replace(**values)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``LOOPWATCH_*`` variables that are no option: (variable, the closest known one)."""
    known = [*_BY_VARIABLE, *INTERNAL_VARIABLES]
    found = []
    for variable in sorted(environ):
        if variable.startswith("LOOPWATCH_") and variable not in known:
            import difflib  # here: only a misspelt variable pays for it

            close = difflib.get_close_matches(variable, list(_BY_VARIABLE), n=1, cutoff=0.6)
            found.append((variable, close[0] if close else None))
    return found


_warned: set[str] = set()


def check_environment(environ: Mapping[str, str] | None = None, *, said: bool = False) -> None:
    """Warn once per process about each unknown ``LOOPWATCH_*`` variable (a typo, probably).

    ``said``: the command that started this process warned already (``loopwatch run``):
    note them as warned without a line, so no child of the command writes one to its stderr
    (a program's stderr is part of what it does: a test may compare it).
    """
    env = os.environ if environ is None else environ
    if said:
        _warned.update(variable for variable, _ in unknown_variables(env))
        return
    for variable, close in unknown_variables(env):
        if variable in _warned:
            continue
        _warned.add(variable)
        guess = f"; did you mean {close}?" if close else ""
        logger.warning(
            "unknown environment variable %s ignored%s (known: %s)",
            variable, guess, ", ".join(_BY_VARIABLE),
        )
