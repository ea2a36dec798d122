"""The demo service: the embedded FastAPI app under uvicorn on loopback, in a thread."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.resources
import importlib.util
import linecache
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import types
from typing import Any

from .plan import APP_MODULE, INSTALL_HINT, DemoError

__all__ = ["DemoApp", "Server", "check_dependencies", "listen"]

# -- the server ----------------------------------------------------------------------------


def check_dependencies() -> None:
    """Raise :class:`DemoError` with the install hint when FastAPI or uvicorn is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError(
            f"the demo needs {' and '.join(missing)}, which are not installed: {INSTALL_HINT}"
        )
    if importlib.util.find_spec("loopwatch.adapters.fastapi") is None:
        raise DemoError(
            "this build of loopwatch has no FastAPI adapter (loopwatch.adapters.fastapi)"
        )


@dataclasses.dataclass
class DemoApp:
    """The demo service module, loaded from a copy outside loopwatch's package directory."""

    module: types.ModuleType
    path: str
    directory: str

    @classmethod
    def load(cls) -> DemoApp:
        package = importlib.resources.files("loopwatch.demo")
        source = package.joinpath("service.py").read_text("utf-8")
        directory = tempfile.mkdtemp(prefix="loopwatch-demo-")
        path = os.path.join(directory, "demo_app.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(APP_MODULE, path)
        if spec is None or spec.loader is None:  # pragma: no cover - a plain .py file
            raise DemoError(f"cannot load the demo app from {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[APP_MODULE] = module
        try:
            spec.loader.exec_module(module)
        except ModuleNotFoundError as exc:
            cls._remove(directory)
            raise DemoError(f"the demo cannot import {exc.name}: {INSTALL_HINT}") from exc
        except BaseException:
            cls._remove(directory)
            raise
        return cls(module, path, directory)

    @property
    def app(self) -> Any:
        return self.module.app

    @property
    def loop(self) -> Any:
        return getattr(self.app.state, "loop", None)

    def close(self) -> None:
        self._remove(self.directory)

    @staticmethod
    def _remove(directory: str) -> None:
        sys.modules.pop(APP_MODULE, None)
        linecache.checkcache()
        shutil.rmtree(directory, ignore_errors=True)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so a taken port is a clear error, not a server crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise DemoError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from exc


class Server:
    """uvicorn serving the app in a thread of its own (signals stay with the main thread)."""

    def __init__(self, app: Any, sock: socket.socket, loop: str) -> None:
        import uvicorn

        config = uvicorn.Config(
            app, loop=loop, lifespan="on", log_level="warning", access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="demo-server",
            daemon=True,
        )

    def start(self, timeout: float = 20.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise DemoError("the demo server stopped during startup (its log is above)")
            if time.monotonic() > deadline:
                raise DemoError(f"the demo server did not start within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
