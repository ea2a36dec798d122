"""What a newcomer tripped on: launchers in the venv's bin directory shown as their code,
and a bad ``LOOPWATCH_*`` variable under ``loopwatch demo``."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

from loopwatch import _frames

ROOT = Path(__file__).resolve().parent.parent


def test_console_script_launchers_are_library_frames() -> None:
    # The launchers pip writes for this environment's console scripts (pytest, uvicorn,
    # loopwatch): code of an installed package, not the user's.
    scripts = Path(sysconfig.get_paths()["scripts"])
    launcher = scripts / "pytest"
    assert launcher.exists(), launcher
    assert not _frames.is_user_file(str(launcher))
    # A script of the user's own next to the venv stays the user's.
    assert _frames.is_user_file(str(scripts.parent.parent / "app.py"))


def test_a_launcher_is_not_the_site_of_an_incident(tmp_path: Path) -> None:
    # A fresh venv, a library in its site-packages and a console-script launcher in its
    # bin directory that calls it, as `venv/bin/uvicorn` calls uvicorn: the nested
    # asyncio.run happens in library code only, so the incident has no user line, and
    # certainly not the launcher's.
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    Path(purelib, "servelib.py").write_text(textwrap.dedent("""
        import asyncio
        import loopwatch

        async def inner():
            return 1

        async def outer():
            return asyncio.run(inner())

        def main():
            loopwatch.install(on_reentry="offload")
            asyncio.run(outer())
            (incident,) = [i for i in loopwatch.incidents() if i.kind == "reentry"]
            print("site:", incident.site)
            return 0
    """))
    launcher = python.parent / "serve"
    launcher.write_text(f"#!{python}\nimport sys\nfrom servelib import main\n"
                        "sys.exit(main())\n")
    result = subprocess.run(
        [str(python), str(launcher)], capture_output=True, text=True, timeout=60,
        env={**os.environ,
             "PYTHONPATH": os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"]])},
    )
    assert result.returncode == 0, result.stderr
    assert "site: None" in result.stdout, result.stdout + result.stderr


def test_demo_with_a_bad_variable_prints_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loopwatch", "demo"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "LOOPWATCH_BLOCK_THRESHOLD": "abc"},
    )
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "loopwatch demo: LOOPWATCH_BLOCK_THRESHOLD='abc' is not a number of seconds; "
        "use a positive number such as 0.1"
    ], result.stderr
    assert "Traceback" not in result.stderr
