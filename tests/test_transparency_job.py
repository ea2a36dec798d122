"""The transparency job's ``--repeat``: N bare/watched pairs, the median CPU ratio quoted;
loopwatch's bytecode compiled before anything is timed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_repeat_quotes_the_median_of_every_pair(tmp_path: Path) -> None:
    # The job compiles loopwatch's bytecode before it times anything: take one module's away
    # (nothing else writes it back here, PYTHONDONTWRITEBYTECODE is set for the job).
    cached = Path(importlib.util.cache_from_source(str(ROOT / "loopwatch" / "_probe.py")))
    cached.unlink(missing_ok=True)
    # One small test_asyncio file, three pairs: a few seconds.
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "transparency.py"), sys.executable,
         "--tests", "test_context", "--repeat", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert cached.exists()
    found = re.search(r"CPU ([\d.]+)x median of 3 pairs \(([\d., ]+)\)", done.stdout)
    assert found is not None, done.stdout
    ratios = [float(r) for r in found.group(2).split(", ")]
    assert len(ratios) == 3
    assert float(found.group(1)) == sorted(ratios)[1]
    # The two pairs after the first were really run, each bare and watched.
    for pair in (2, 3):
        for mode in ("bare", "loopwatch"):
            assert (tmp_path / f"{sys.version_info.major}.{sys.version_info.minor}"
                    / f"{mode}-{pair}" / "regrtest.log").exists()
