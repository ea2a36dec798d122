"""A real IPython kernel for tests: start it, run cells, read what each cell produced.

The kernel is ipykernel, started through jupyter_client with a throwaway kernelspec whose
command is *this* interpreter (``sys.executable -m ipykernel_launcher``), so it sees the
same packages as the tests whatever ``python`` on ``PATH`` is. It listens on 127.0.0.1
only, uses its own IPython directory (no user profile, no shared history), and every wait
is bounded.

Typical use::

    with KernelHarness() as kernel:
        cell = kernel.execute("print(1 + 1)")
        assert cell.stdout == "2\\n" and cell.error is None
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

__all__ = ["CellError", "CellResult", "KernelHarness", "KernelTimeout"]

REPO_ROOT = Path(__file__).resolve().parents[1]
_KERNEL_NAME = "loopwatch-test"


class KernelTimeout(TimeoutError):
    """The kernel did not start or a cell did not finish in time; carries what was seen."""


@dataclass(frozen=True)
class CellError:
    """The ``error`` a cell raised."""

    ename: str
    evalue: str
    traceback: tuple[str, ...] = ()


@dataclass
class CellResult:
    """Everything one executed cell sent back."""

    code: str
    status: str = ""  # "ok" or "error", from the execute_reply
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)  # display_data bundles
    updates: list[dict[str, Any]] = field(default_factory=list)  # update_display_data bundles
    results: list[dict[str, Any]] = field(default_factory=list)  # execute_result bundles
    error: CellError | None = None

    def texts(self) -> list[str]:
        """The ``text/plain`` of every display and result, in order."""
        return [b["text/plain"] for b in self.displays + self.results if "text/plain" in b]

    def htmls(self) -> list[str]:
        """The ``text/html`` of every display and result, in order."""
        return [b["text/html"] for b in self.displays + self.results if "text/html" in b]

    @property
    def result_text(self) -> str | None:
        """The ``text/plain`` of the cell's value (``Out[n]``), if it had one."""
        return self.results[-1].get("text/plain") if self.results else None

    def describe(self) -> str:
        """A readable dump for assertion messages."""
        return json.dumps(
            {
                "status": self.status,
                "stdout": self.stdout,
                "stderr": self.stderr,
                "displays": self.displays,
                "results": self.results,
                "error": None if self.error is None else [self.error.ename, self.error.evalue],
            },
            indent=1,
            default=str,
        )


class _Quiet(Exception):
    """The kernel sent nothing for a while (not an error: the cell may still be running)."""


class KernelHarness:
    """Start an ipykernel for this interpreter; :meth:`execute` cells; shut it down."""

    def __init__(
        self,
        *,
        startup_timeout: float = 60.0,
        cell_timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.startup_timeout = startup_timeout
        self.cell_timeout = cell_timeout
        self._extra_env = dict(env or {})
        self._dir: Path | None = None
        self._log: Any = None
        self._km: KernelManager | None = None
        self._kc: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KernelHarness:
        """Start the kernel and wait until it answers (bounded by ``startup_timeout``).

        jupyter_client picks free ports, closes them and lets the kernel bind them: another
        process can take one in between (CI runs test lanes side by side). That start is
        tried again with new ports, at most three times in all.
        """
        for attempt in range(3):
            try:
                return self._start_once()
            except Exception as exc:
                text = f"{exc}\n{getattr(exc, '__cause__', '')}"
                if "Address already in use" not in text or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self) -> KernelHarness:
        self._dir = Path(tempfile.mkdtemp(prefix="loopwatch-kernel-"))
        spec_dir = self._dir / "kernels" / _KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "loopwatch tests",
            "language": "python",
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ipython_dir = self._dir / "ipython"
        ipython_dir.mkdir()

        env = dict(os.environ)
        pythonpath = [str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            pythonpath.append(env["PYTHONPATH"])
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "IPYTHONDIR": str(ipython_dir),
                "JUPYTER_PLATFORM_DIRS": "1",
                # debugpy warns about frozen modules on 3.11+ at kernel start; not ours.
                "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            }
        )
        env.update(self._extra_env)

        manager = KernelManager(
            kernel_name=_KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self._dir / "kernels")]),
            ip="127.0.0.1",
            transport="tcp",
            connection_file=str(self._dir / "connection.json"),
        )
        manager.shutdown_wait_time = 10.0
        self._km = manager
        try:
            # The kernel process's own stderr (not the cells') goes to a file, shown on failure.
            self._log = open(self._dir / "kernel.log", "wb")  # noqa: SIM115 - closed in shutdown
            manager.start_kernel(env=env, cwd=str(self._dir), stdout=self._log, stderr=self._log)
            client = manager.client()
            client.start_channels()
            self._kc = client
            try:
                client.wait_for_ready(timeout=self.startup_timeout)
            except RuntimeError as exc:
                raise KernelTimeout(
                    f"the kernel did not become ready: {exc}\n{self.kernel_log()}"
                ) from exc
        except BaseException:
            self.shutdown()
            raise
        return self

    def shutdown(self) -> None:
        """Stop the channels and the kernel (politely, then by force), remove temp files."""
        client, manager, self._kc, self._km = self._kc, self._km, None, None
        try:
            if client is not None:
                client.stop_channels()
            if manager is not None and manager.has_kernel:
                manager.shutdown_kernel(now=False)
        finally:
            if manager is not None:
                manager.cleanup_resources()
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def kernel_log(self) -> str:
        """What the kernel process wrote to its own stdout/stderr so far (the last 4000 chars)."""
        if self._dir is None:
            return ""
        try:
            text = (self._dir / "kernel.log").read_text(errors="replace")
        except OSError:
            return ""
        return text[-4000:]

    def __enter__(self) -> KernelHarness:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- cells -----------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Interrupt the running cell, as the notebook's stop button does."""
        if self._km is None:
            raise RuntimeError("the kernel is not started")
        self._km.interrupt_kernel()

    def execute(
        self,
        code: str,
        *,
        timeout: float | None = None,
        on_stdout: Callable[[str], None] | None = None,
        on_quiet: Callable[[], None] | None = None,
        quiet_after: float = 5.0,
    ) -> CellResult:
        """Run one cell and collect its output until the kernel is idle again.

        ``on_stdout`` is called with each piece of stdout as it arrives, while the cell
        still runs (to react to it, e.g. with :meth:`interrupt`); ``on_quiet`` each time
        the kernel has sent nothing for ``quiet_after`` seconds (to press stop again).
        """
        client = self._kc
        if client is None:
            raise RuntimeError("the kernel is not started")
        deadline = time.monotonic() + (self.cell_timeout if timeout is None else timeout)
        cell = CellResult(code=code)
        msg_id = client.execute(code, store_history=True, allow_stdin=False)

        idle = False
        while not idle:
            try:
                msg = self._next(
                    client.get_iopub_msg, deadline, cell,
                    quiet_after if on_quiet is not None else None,
                )
            except _Quiet:
                # Not once the cell's error is in: the cell is ending, and a SIGINT that lands
                # while the kernel sends its reply is caught there and the reply lost.
                if on_quiet is not None and cell.error is None:
                    on_quiet()
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue  # output of an earlier cell or of the kernel's start
            kind = msg["msg_type"]
            content = msg["content"]
            if kind == "stream":
                if content.get("name") == "stderr":
                    cell.stderr += content.get("text", "")
                else:
                    cell.stdout += content.get("text", "")
                    if on_stdout is not None:
                        on_stdout(content.get("text", ""))
            elif kind == "display_data":
                cell.displays.append(dict(content.get("data", {})))
            elif kind == "update_display_data":
                cell.updates.append(dict(content.get("data", {})))
            elif kind == "execute_result":
                cell.results.append(dict(content.get("data", {})))
            elif kind == "error":
                cell.error = CellError(
                    content.get("ename", ""),
                    content.get("evalue", ""),
                    tuple(content.get("traceback", ())),
                )
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True

        while True:
            reply = self._next(client.get_shell_msg, deadline, cell)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                cell.status = reply["content"].get("status", "")
                return cell

    def run_cells(self, cells: list[str]) -> list[CellResult]:
        """Run cells in order; return each one's result."""
        return [self.execute(code) for code in cells]

    def _next(
        self, get: Any, deadline: float, cell: CellResult, quiet: float | None = None
    ) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KernelTimeout(self._timeout_message(cell))
        wait = remaining if quiet is None else min(remaining, quiet)
        try:
            msg: dict[str, Any] = get(timeout=wait)
        except queue.Empty:
            if wait < remaining:
                raise _Quiet from None
            raise KernelTimeout(self._timeout_message(cell)) from None
        return msg

    def _timeout_message(self, cell: CellResult) -> str:
        return (
            f"cell did not finish in time:\n{cell.code}\n{cell.describe()}\n"
            f"kernel log:\n{self.kernel_log()}"
        )
