"""A real Prometheus server and ``promtool`` for tests.

:class:`PrometheusServer` runs Debian's (or any) ``prometheus`` binary on 127.0.0.1, on a
free port, with its own configuration and data directory in a temporary folder. It scrapes
the given targets at a short interval, evaluates rule files, and answers instant queries
through the HTTP API. Nothing here touches a system-wide Prometheus.

Typical use in a test (skips without the binary, fails instead when ``CI`` is set)::

    require_binary("prometheus")
    with PrometheusServer(["127.0.0.1:8000"], rule_files=[rules]) as prom:
        prom.wait_for_scrapes(2)
        result = prom.query("up")
        active = prom.alerts()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

__all__ = [
    "PromQLError",
    "PrometheusError",
    "PrometheusServer",
    "QueryResult",
    "Series",
    "check_config",
    "check_rules",
    "free_port",
    "prometheus_binary",
    "promtool",
    "require_binary",
    "run_rule_unit_tests",
]

_BINARIES = ("prometheus", "promtool")
_FALLBACK_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
_HTTP_TIMEOUT = 10.0


class PrometheusError(RuntimeError):
    """Prometheus or promtool failed; the message carries their output."""


class PromQLError(PrometheusError):
    """Prometheus rejected a query."""

    def __init__(self, expr: str, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}\n  in: {expr}")
        self.expr = expr
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class Series:
    """One element of an instant-query result: its labels and its value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class QueryResult:
    """The answer to an instant query."""

    expr: str
    result_type: str
    series: list[Series] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.series)


# -- binaries -----------------------------------------------------------------------------


def prometheus_binary(name: str = "prometheus") -> Path | None:
    """Where ``prometheus`` or ``promtool`` is installed: PATH first, then /usr/bin."""
    if name not in _BINARIES:
        raise ValueError(f"name must be one of {_BINARIES}, not {name!r}")
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    for directory in _FALLBACK_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str = "prometheus") -> Path:
    """The binary's path; otherwise skip the test, or fail it when ``CI`` is set."""
    path = prometheus_binary(name)
    if path is not None:
        return path
    reason = (
        f"{name!r} is not installed (looked on PATH, in /usr/bin and /usr/local/bin); "
        "install it with: apt-get install prometheus"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason}. CI must install it.", pytrace=False)
    pytest.skip(reason)


def promtool(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS``; raise :class:`PrometheusError` with its output if it fails."""
    binary = require_binary("promtool")
    proc = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise PrometheusError(
            f"promtool {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    return proc


def check_rules(*paths: Path) -> str:
    """``promtool check rules``: the report (it lists the rules found per file)."""
    proc = promtool("check", "rules", *(str(p) for p in paths))
    return proc.stdout + proc.stderr


def check_config(path: Path) -> str:
    """``promtool check config`` (also checks the rule files the config names)."""
    proc = promtool("check", "config", str(path))
    return proc.stdout + proc.stderr


def run_rule_unit_tests(*paths: Path) -> str:
    """``promtool test rules``: run rule unit-test files."""
    proc = promtool("test", "rules", *(str(p) for p in paths))
    return proc.stdout + proc.stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the server ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, not {seconds}")
    return f"{round(seconds * 1000)}ms"


def _parse_rfc3339(value: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp as Prometheus writes them (nanoseconds, Z)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float(f"0.{fraction}" if fraction else 0)


class PrometheusServer:
    """A Prometheus server of its own, scraping ``targets`` under one job.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        job: str = "loopwatch",
        metrics_path: str = "/metrics",
        scrape_interval: float = 1.0,
        evaluation_interval: float = 1.0,
        rule_files: Iterable[Path] = (),
        binary: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        for target in targets:
            host = target.rsplit(":", 1)[0].strip("[]")
            if host not in ("127.0.0.1", "::1"):
                raise ValueError(f"targets must be on loopback, not {target!r}")
        self.targets = list(targets)
        self.job = job
        self.metrics_path = metrics_path
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # lifecycle

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the server's HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The configuration the server runs with (JSON is valid YAML)."""
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": _duration(self.scrape_interval),
                "scrape_timeout": _duration(min(self.scrape_interval, 10.0)),
                "evaluation_interval": _duration(self.evaluation_interval),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        return json.dumps(config, indent=2)

    def start(self) -> None:
        """Start the server and wait until it is ready; retry on a port taken meanwhile."""
        if self._process is not None:
            raise PrometheusError("this server is already running")
        binary = self.binary or require_binary("prometheus")
        self.workdir = Path(tempfile.mkdtemp(prefix="prom-harness-"))
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text(), encoding="utf-8")
        last_log = ""
        for attempt in range(3):
            self.port = free_port()
            self._log_path = self.workdir / f"prometheus-{attempt}.log"
            with self._log_path.open("wb") as log:
                self._process = subprocess.Popen(
                    [
                        str(binary),
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--storage.tsdb.retention.time=1h",
                        "--log.level=info",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )
            if self._wait_ready(self._process):
                return
            last_log = self.log()
            self._terminate()
            if "address already in use" not in last_log:
                break
        self._cleanup()
        raise PrometheusError(f"Prometheus did not become ready:\n{last_log[-4000:]}")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its files."""
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._log_path = None

    def log(self) -> str:
        """What the server printed so far (for failure messages)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(encoding="utf-8", errors="replace")

    # HTTP API

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """``data`` of a Prometheus API answer; errors raise :class:`PromQLError`."""
        if self._process is None:
            raise PrometheusError("the server is not running")
        body = urllib.parse.urlencode(params).encode() if params is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=body)
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as error:
            # Bad queries come back as 4xx with a JSON body that names the problem.
            raw = error.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {error.code}: {raw[:500]!r}") from error
        if payload.get("status") != "success":
            raise PromQLError(
                (params or {}).get("query", path),
                str(payload.get("errorType", "error")),
                str(payload.get("error", payload)),
            )
        return payload["data"]

    def query(self, expr: str, *, at: float | None = None) -> QueryResult:
        """Evaluate ``expr`` as an instant query (now, or at epoch ``at``)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("/api/v1/query", params)
        result_type = data["resultType"]
        raw = data["result"]
        if result_type in ("scalar", "string"):
            series = [Series({}, float(raw[1]))] if result_type == "scalar" else []
        elif result_type == "vector":
            series = [Series(dict(item["metric"]), float(item["value"][1])) for item in raw]
        else:
            # A range selector at the top level; count its last values.
            series = [
                Series(dict(item["metric"]), float(item["values"][-1][1]))
                for item in raw
                if item["values"]
            ]
        return QueryResult(expr, result_type, series)

    def targets_status(self) -> list[dict[str, Any]]:
        """The active targets with their health and last error."""
        return list(self.api("/api/v1/targets")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups with each rule's health, state and last error."""
        return list(self.api("/api/v1/rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts that are pending or firing now."""
        return list(self.api("/api/v1/alerts")["alerts"])

    # waiting

    def scrapes(self) -> dict[str, int]:
        """Successful scrapes so far, per target instance."""
        result = self.query(f'sum_over_time(up{{job="{self.job}"}}[1h])')
        return {s.labels.get("instance", ""): int(s.value) for s in result.series}

    def wait_for_scrapes(self, count: int, *, timeout: float = 30.0) -> dict[str, int]:
        """Wait until every target was scraped successfully ``count`` more times than now."""
        start = self.scrapes()
        deadline = time.monotonic() + timeout
        while True:
            done = self.scrapes()
            if all(done.get(t, 0) >= start.get(t, 0) + count for t in self.targets):
                return done
            if time.monotonic() >= deadline:
                raise PrometheusError(
                    f"no {count} successful scrapes of {self.targets} within {timeout}s "
                    f"(now {done}); targets: {self._target_summary()}"
                )
            time.sleep(min(0.2, self.scrape_interval / 4))

    def wait_for_rule_evaluation(self, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every loaded rule group has been evaluated after this call began."""
        began = time.time()
        deadline = time.monotonic() + timeout
        while True:
            groups = self.rule_groups()
            stamps = [_parse_rfc3339(g["lastEvaluation"]) for g in groups]
            if groups and all(s > began for s in stamps):
                return groups
            if time.monotonic() >= deadline:
                raise PrometheusError(f"rule groups not evaluated within {timeout}s: {groups}")
            time.sleep(min(0.2, self.evaluation_interval / 4))

    def _target_summary(self) -> str:
        try:
            return "; ".join(
                f"{t['scrapeUrl']} {t['health']} {t.get('lastError', '')}".strip()
                for t in self.targets_status()
            )
        except PrometheusError as error:
            return f"(could not list targets: {error})"
