"""The ``loopwatch`` command: ``demo``, ``run``, ``doctor``, ``tasks`` and ``integrations
export``.

* ``loopwatch demo`` runs an instrumented FastAPI service that hits every hazard, sends it
  traffic and shows what loopwatch caught (see :mod:`loopwatch.demo`).
* ``loopwatch run [options] -- CMD ARGS...`` runs any command with loopwatch installed at
  interpreter start in every Python process it starts: a ``sitecustomize`` directory goes
  first on ``PYTHONPATH`` and the options become ``LOOPWATCH_*`` variables, the way
  ``opentelemetry-instrument`` works. No code change in the app.
* ``loopwatch doctor`` prints what loopwatch sees here: Python, the loop implementation,
  frameworks, nest_asyncio, the monitors of this build and the effective configuration.
* ``loopwatch integrations export DIR`` writes the operator files shipped in the package
  (Grafana dashboard, Prometheus alert rules and scrape config, gunicorn config).
* ``loopwatch tasks URL`` prints the live tasks of a running service (its opt-in task
  view) as a tree by handler, the way ``pstree`` prints processes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import textwrap
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._config import OPTIONS, Config, load_config, parse, unknown_variables
from ._errors import ConfigError

__all__ = ["HOOK_DIR", "ROOT_PID_VARIABLE", "main"]

# The directory `loopwatch run` puts first on PYTHONPATH; it holds only sitecustomize.py.
HOOK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sitecustomize")
# Set by `loopwatch run` to its own pid, which the command keeps across exec: that process
# serves LOOPWATCH_METRICS_PORT; its children do so only if the port is still free.
ROOT_PID_VARIABLE = "LOOPWATCH_RUN_PID"

# (flag, install() option, metavar, help) of `loopwatch run`
def _run_flags() -> tuple[tuple[str, str, str | None, str], ...]:
    """(flag, option, metavar or None for a switch, help) of ``loopwatch run``.

    Made from the options table, so the flags, their help and the values they accept are
    the ones ``install()`` has. Every option with a variable gets a flag but ``disable``
    (pointless here); a boolean is a switch that sets it on (off for one that is on by
    default: ``--no-watchdog``).
    """
    flags: list[tuple[str, str, str | None, str]] = []
    for option in OPTIONS.values():
        if option.variable is None or option.name == "disable":
            continue
        flag = "--" + option.name.replace("_", "-")
        text = f"{option.doc} Accepts {option.accepted}; default {option.default!r}."
        if option.type == "bool":
            if option.default:
                flags.append((f"--no-{flag[2:]}", option.name, None, f"turn off: {option.doc}"))
            else:
                flags.append((flag, option.name, None, option.doc))
        else:
            metavar = "SECONDS" if "seconds" in option.accepted else option.name.upper()
            flags.append((flag, option.name, metavar, text.replace("%", "%%")))
    return tuple(flags)


_RUN_FLAGS = _run_flags()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``loopwatch`` command line; return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.func(args)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopwatch",
        description="Runtime guard for asyncio services: catches re-entrant event-loop runs, "
        "blocked loops, lost task errors and never-awaited coroutines.",
    )
    parser.add_argument("--version", action="version", version=f"loopwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="run an instrumented FastAPI service that hits every hazard",
        description="Start an instrumented FastAPI app under uvicorn on 127.0.0.1, drive "
        "traffic at routes that exercise H1-H5, and show every request's outcome, the "
        "incidents and the metrics. Exit status 0 only if every request was answered and "
        "every hazard was caught.",
    )
    demo.add_argument("--serve", action="store_true",
                      help="keep serving after the report (for a Prometheus to scrape) until "
                      "Ctrl-C or SIGTERM, with a little traffic every few seconds")
    demo.add_argument("--port", type=_port_number, default=0,
                      help="port to listen on (default: a free one)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1; anything else is "
                      "reachable from other machines)")
    demo.add_argument("--json", action="store_true",
                      help="print the result (incidents included) as one JSON document")
    demo.add_argument("--requests", type=_at_least(6), default=60, metavar="N",
                      help="requests in the burst (default 60)")
    demo.add_argument("--concurrency", type=_at_least(1), default=8, metavar="N",
                      help="concurrent clients (default 8)")
    demo.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                      help="uvicorn's event loop (default auto: uvloop when installed)")
    demo.add_argument("--interval", type=float, default=3.0, metavar="SECONDS",
                      help="with --serve, seconds between traffic bursts (default 3)")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="also show loopwatch's and asyncio's log lines as they happen")
    demo.set_defaults(func=_demo)

    run = sub.add_parser(
        "run", help="run a command with loopwatch installed in its Python processes",
        usage="loopwatch run [options] -- CMD [ARGS...]",
        description="Run CMD with loopwatch installed at interpreter start in it and in every "
        "Python process it starts (sitecustomize on PYTHONPATH plus LOOPWATCH_* variables); "
        "no code change in the app. Example: loopwatch run -- uvicorn app:app",
    )
    for flag, option, metavar, text in _RUN_FLAGS:
        if metavar is None:
            switch = "0" if flag.startswith("--no-") else "1"
            run.add_argument(flag, dest=option, action="store_const", const=switch, help=text)
        else:
            run.add_argument(flag, dest=option, metavar=metavar, help=text)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD", help="the command to run")
    run.set_defaults(func=_run)

    doctor = sub.add_parser(
        "doctor", help="show what loopwatch sees in this environment",
        description="Print Python, the event loop implementation, frameworks, nest_asyncio, "
        "the monitors of this build and the effective configuration. Exit status 1 when the "
        "LOOPWATCH_* configuration is invalid.",
    )
    doctor.add_argument("--json", action="store_true", help="print one JSON document")
    doctor.set_defaults(func=_doctor)

    integrations = sub.add_parser(
        "integrations", help="the operator files: Grafana dashboard, alert rules, configs",
        description="Work with the operator files shipped in the package: the Grafana "
        "dashboard, the Prometheus alert rules and scrape config, the gunicorn config.",
    )
    actions = integrations.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export", help="write the operator files into a directory",
        description="Write grafana/loopwatch.json, prometheus/alerts.yml, "
        "prometheus/scrape.yml, gunicorn/gunicorn.conf.py and a README into DIR, ready for "
        "`promtool check rules` and Grafana's dashboard import.",
    )
    export.add_argument("dir", metavar="DIR", help="directory to write into (created if needed)")
    export.add_argument("--force", action="store_true", help="overwrite files already there")
    export.set_defaults(func=_integrations_export)
    tasks = sub.add_parser(
        "tasks", help="show the live tasks of a running service, as a tree by handler",
        description="Fetch the task view of a service instrumented with tasks_endpoint=True "
        "(URL: its metrics endpoint, or that URL followed by /tasks) and print its tasks as "
        "a tree: loop, handler, task and the await chain it waits in, innermost first. "
        "Exit status 1 when the view cannot be fetched.",
    )
    tasks.add_argument("url", metavar="URL", help="e.g. http://127.0.0.1:8000/metrics")
    tasks.add_argument("--token", default=None,
                       help="the service's metrics token (default: $LOOPWATCH_METRICS_TOKEN)")
    tasks.add_argument("--json", action="store_true", help="print the view's JSON as fetched")
    tasks.add_argument("--full", action="store_true",
                       help="every frame of each chain (default: down to the user's code)")
    tasks.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="how long to wait for the service (default 10)")
    tasks.set_defaults(func=_tasks)
    return parser


def tasks_url(url: str) -> str:
    """The task view's URL for a metrics URL (or the task view's URL itself)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/tasks"):
        path += "/tasks"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _tasks(args: argparse.Namespace) -> int:
    from ._taskview import render_text

    request = urllib.request.Request(tasks_url(args.url), headers={"Accept": "application/json"})
    token = args.token or os.environ.get("LOOPWATCH_METRICS_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        reason = {
            401: "the service wants its metrics token (--token)",
            404: "no task view there: is loopwatch installed with tasks_endpoint=True "
            "(LOOPWATCH_TASKS_ENDPOINT=1), and is the URL its metrics endpoint?",
        }.get(exc.code, exc.reason)
        print(f"loopwatch tasks: {request.full_url}: HTTP {exc.code}: {reason}",
              file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"loopwatch tasks: {request.full_url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(body.decode() + "\n")
        return 0
    try:
        data = json.loads(body)
        items = data["tasks"]
    except (ValueError, KeyError, TypeError):
        print(f"loopwatch tasks: {request.full_url}: not a task view", file=sys.stderr)
        return 1
    pid = data.get("pid")
    print(f"{request.full_url}" + (f" (pid {pid})" if pid else ""))
    sys.stdout.write(render_text(items, full=args.full))
    return 0


def _port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def _at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


# -- integrations --------------------------------------------------------------------------


def _integrations_export(args: argparse.Namespace) -> int:
    from ._integrations import export

    try:
        written = export(args.dir, force=args.force)
    except (FileExistsError, FileNotFoundError, OSError) as exc:
        print(f"loopwatch integrations export: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


# -- demo ----------------------------------------------------------------------------------


def _warn_unknown(command: str, env: dict[str, str]) -> None:
    """One line per unknown ``LOOPWATCH_*`` variable (a typo, probably), naming the closest."""
    for variable, close in unknown_variables(env):
        guess = f"; did you mean {close}?" if close else ""
        print(f"loopwatch {command}: warning: unknown variable {variable} ignored{guess}",
              file=sys.stderr)


def _config_problem(command: str) -> bool:
    """Say in one line what is wrong with the ``LOOPWATCH_*`` variables, if anything."""
    env = dict(os.environ)
    _warn_unknown(command, env)
    try:
        load_config({}, environ=env)
    except ConfigError as exc:
        print(f"loopwatch {command}: {exc}", file=sys.stderr)
        return True
    return False


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, run_demo

    if _config_problem("demo"):
        return 2
    if not args.interval > 0:
        print("loopwatch demo: --interval must be a positive number of seconds", file=sys.stderr)
        return 2
    return run_demo(DemoOptions(
        requests=args.requests, concurrency=args.concurrency, serve=args.serve,
        host=args.host, port=args.port, json=args.json, loop=args.loop, verbose=args.verbose,
        interval=args.interval,
    ))


# -- run -----------------------------------------------------------------------------------


def run_environment(
    flags: dict[str, str | None], environ: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment for the wrapped command: hook first on PYTHONPATH, flags as variables.

    ``flags`` maps install() options to the text given on the command line. Raises
    :class:`ConfigError` naming the flag, or the variable for a bad inherited value.
    """
    env = dict(os.environ if environ is None else environ)
    names = {option: flag for flag, option, _, _ in _RUN_FLAGS}
    for option, value in flags.items():
        if value is None:
            continue
        parse(option, value, name=names[option])  # the core's own parser, with the flag's name
        variable = OPTIONS[option].variable
        if variable is not None:
            env[variable] = value
    load_config({}, environ=env)  # whatever LOOPWATCH_* the caller already had
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != HOOK_DIR]
    env["PYTHONPATH"] = os.pathsep.join([HOOK_DIR, *parts])
    env[ROOT_PID_VARIABLE] = str(os.getpid())
    return env


def _run(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("loopwatch run: no command given; usage: loopwatch run [options] -- CMD [ARGS...]",
              file=sys.stderr)
        return 2
    _warn_unknown("run", dict(os.environ))
    try:
        env = run_environment({option: getattr(args, option) for _, option, _, _ in _RUN_FLAGS})
    except ConfigError as exc:
        print(f"loopwatch run: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no exec that keeps the process there: run it as a child
        return _spawn(command, env)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"loopwatch run: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # pragma: no cover - execvpe does not return


def _spawn(command: list[str], env: dict[str, str]) -> int:  # pragma: no cover - Windows
    import subprocess

    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"loopwatch run: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue  # the console sent the child the same Ctrl-C; wait for it to finish


# -- doctor --------------------------------------------------------------------------------

_FRAMEWORKS = ("fastapi", "starlette", "litestar", "aiohttp", "uvicorn", "gunicorn", "anyio",
               "discord.py", "py-cord", "nextcord", "disnake", "ipython", "ipykernel",
               "prometheus-client")
_NEST = ("nest-asyncio", "nest-asyncio2")
_MONITORS = (
    ("H1/H2 re-entry guard", "loopwatch._reentry"),
    ("reenter policy", "loopwatch._nested"),
    ("H3 lag probe and watchdog", "loopwatch._watchdog"),
    ("H4/H5 task and coroutine hooks", "loopwatch._tasks"),
)


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _policy_name() -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the policy API is deprecated in 3.14
        policy = asyncio.get_event_loop_policy()
    cls = type(policy)
    return f"{cls.__module__}.{cls.__qualname__}"


def diagnose(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``loopwatch doctor`` reports, as plain data; ``config_error`` is set on bad values."""
    from . import _monitor, _reentry

    env = dict(os.environ if environ is None else environ)
    monitor = _monitor.current()
    uvloop_version = _version_of("uvloop")
    config: Config | None = None
    config_error = None
    try:
        config = monitor.config if monitor is not None else load_config({}, environ=env)
    except ConfigError as exc:
        config_error = str(exc)
    sources = {}
    for option, row in OPTIONS.items():
        variable = row.variable
        if variable is not None and variable in env:
            sources[option] = variable
        else:
            sources[option] = "default"
    return {
        "loopwatch": {
            "version": __version__,
            "location": os.path.dirname(os.path.abspath(__file__)),
            "installed_here": monitor is not None,
            "run_hook_active": HOOK_DIR in sys.path,
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "platform": platform.platform(terse=True),
        },
        "event_loop": {
            "policy": _policy_name(),
            "uvloop": uvloop_version,
            "uvicorn_auto_loop": "uvloop" if uvloop_version else "asyncio",
        },
        "frameworks": {dist: _version_of(dist) for dist in _FRAMEWORKS},
        "nest_asyncio": {
            "installed": {dist: _version_of(dist) for dist in _NEST},
            "patched_here": _reentry.foreign_patch(),
        },
        "monitors": {
            module: importlib.util.find_spec(module) is not None for _, module in _MONITORS
        },
        "config": None if config is None else {
            option: {"value": value, "source": sources.get(option, "default")}
            for option, value in config.public_dict().items()
        },
        "config_error": config_error,
        "environment": {k: v for k, v in sorted(env.items()) if k.startswith("LOOPWATCH_")}
        | {k: env[k] for k in ("PROMETHEUS_MULTIPROC_DIR",) if k in env},
    }


def _doctor(args: argparse.Namespace) -> int:
    _warn_unknown("doctor", dict(os.environ))
    data = diagnose()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render_doctor(data), end="")
    if data["config_error"]:
        print(f"loopwatch doctor: ConfigError: {data['config_error']}", file=sys.stderr)
        return 1
    return 0


def render_doctor(data: dict[str, Any]) -> str:
    """The text form of :func:`diagnose`."""
    lines: list[str] = []

    def row(key: str, value: str) -> None:
        lines.append(f"{key:<14}{value}")

    lw, py, loop = data["loopwatch"], data["python"], data["event_loop"]
    row("loopwatch", f"{lw['version']} at {lw['location']}")
    row("", "installed in this process: " + ("yes" if lw["installed_here"] else "no")
        + (" (via loopwatch run)" if lw["run_hook_active"] else ""))
    row("python", f"{py['version']} ({py['implementation']}) {py['executable']}")
    row("platform", py["platform"])
    row("loop policy", loop["policy"])
    row("uvloop", f"{loop['uvloop']} installed; uvicorn's default loop (--loop auto) is uvloop"
        if loop["uvloop"] else "not installed; uvicorn runs the stdlib asyncio loop")
    present = [f"{d} {v}" for d, v in data["frameworks"].items() if v]
    absent = [d for d, v in data["frameworks"].items() if not v]
    for i, text in enumerate(textwrap.wrap(", ".join(present) or "none found", 72)):
        row("frameworks" if i == 0 else "", text)
    if absent:
        row("", "not installed: " + ", ".join(absent))
    nest = data["nest_asyncio"]
    installed = [f"{d} {v}" for d, v in nest["installed"].items() if v]
    row("nest_asyncio", (", ".join(installed) + " installed") if installed else "not installed")
    if nest["patched_here"]:
        row("", f"patched in this process: {nest['patched_here']}; loopwatch leaves those entry "
            "points alone")
    elif installed:
        row("", "not applied in this process (it is applied by code, at runtime; loopwatch "
            "reports it as H6 when it sees it)")
    if installed and loop["uvloop"]:
        row("", "note: nest_asyncio does not work on uvloop, uvicorn's default loop")
    for label, module in _MONITORS:
        present_ = data["monitors"][module]
        row("monitors" if module == _MONITORS[0][1] else "",
            f"{label}: {'present' if present_ else 'absent'} ({module})")
    if data["config_error"]:
        row("config", f"INVALID: {data['config_error']}")
    else:
        if lw["installed_here"]:
            row("config", "(the installed monitor's)")
        first = not lw["installed_here"]
        for option, item in data["config"].items():
            source = "" if item["source"] == "default" else f"  (from {item['source']})"
            row("config" if first else "", f"{option} = {item['value']!r}{source}")
            first = False
    for key, value in data["environment"].items():
        row("environment" if key == next(iter(data["environment"])) else "", f"{key}={value}")
    return "\n".join(lines) + "\n"
