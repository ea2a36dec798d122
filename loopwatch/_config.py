"""Options: keywords of :func:`loopwatch.install` and ``LOOPWATCH_*`` environment variables.

Each option has one parser used for both sources, so a bad value gets the same message
whether it came from code or from the environment. Keywords win over the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from ._context import FRAMEWORKS
from ._errors import ConfigError

__all__ = ["POLICIES", "Config", "load_config"]

POLICIES = ("auto", "offload", "raise", "reenter")
LOG_FORMATS = ("text", "json")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective configuration of an installed monitor."""

    on_reentry: str = "offload"
    block_threshold: float = 0.1
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    disable: bool = False
    offload_timeout: float = 30.0
    label_cap: int = 100
    default_framework: str = "none"
    watchdog: bool = True
    lag_tick: float = 0.02
    stuck_after: float = 10.0
    tasks_endpoint: bool = False
    registry: Any = None  # a prometheus_client CollectorRegistry; None means the default one

    def public_dict(self) -> dict[str, Any]:
        """The options as plain values (the registry by type only), for ``doctor`` and logs."""
        out = dataclasses.asdict(self)
        out["registry"] = "default" if self.registry is None else type(self.registry).__name__
        return out


def _choice(accepted: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in accepted:
            raise ConfigError(
                f"{name}={value!r} is not accepted; use one of: {', '.join(accepted)}"
            )
        return str(text)

    return parse


def _seconds(name: str, value: Any) -> float:
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
    return _seconds(name, value)


def _port(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        port = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a port; use an integer from 0 to 65535"
        ) from None
    if isinstance(value, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{name}={value!r} is not a port; use an integer from 0 to 65535")
    return port


def _addr(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise ConfigError(f"{name}={value!r} is not an address; use an IP such as 127.0.0.1 or ::1")
    return value.strip()


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


def _framework(name: str, value: Any) -> str:
    return _choice(tuple(sorted(FRAMEWORKS)))(name, value)


def _registry(name: str, value: Any) -> Any:
    if value is not None and not (hasattr(value, "register") and hasattr(value, "collect")):
        raise ConfigError(f"{name}={value!r} is not a prometheus_client CollectorRegistry")
    return value


# option -> (environment variable or None for keyword-only, parser)
_OPTIONS: dict[str, tuple[str | None, Callable[[str, Any], Any]]] = {
    "on_reentry": ("LOOPWATCH_ON_REENTRY", _choice(POLICIES)),
    "block_threshold": ("LOOPWATCH_BLOCK_THRESHOLD", _seconds),
    "log_format": ("LOOPWATCH_LOG_FORMAT", _choice(LOG_FORMATS)),
    "metrics_port": ("LOOPWATCH_METRICS_PORT", _port),
    "metrics_addr": ("LOOPWATCH_METRICS_ADDR", _addr),
    "disable": ("LOOPWATCH_DISABLE", _flag),
    "offload_timeout": ("LOOPWATCH_OFFLOAD_TIMEOUT", _seconds),
    "label_cap": ("LOOPWATCH_LABEL_CAP", _count),
    "default_framework": ("LOOPWATCH_FRAMEWORK", _framework),
    "watchdog": ("LOOPWATCH_WATCHDOG", _flag),
    "lag_tick": ("LOOPWATCH_LAG_TICK", _seconds),
    "stuck_after": ("LOOPWATCH_STUCK_AFTER", _seconds_or_off),
    "tasks_endpoint": ("LOOPWATCH_TASKS_ENDPOINT", _flag),
    "registry": (None, _registry),
}


def load_config(
    options: Mapping[str, Any], environ: Mapping[str, str] | None = None, base: Config | None = None
) -> Config:
    """Build a :class:`Config` from keywords over environment over ``base`` (or defaults).

    Raises :class:`ConfigError` naming the keyword or variable for any bad value or unknown
    keyword.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_OPTIONS))}"
        )
    values: dict[str, Any] = {}
    for option, (variable, parse) in _OPTIONS.items():
        if option in options:
            values[option] = parse(option, options[option])
        elif base is None and variable is not None and variable in env:
            values[option] = parse(variable, env[variable])
    start = base if base is not None else Config()
    return dataclasses.replace(start, **values)
