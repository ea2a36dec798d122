"""The transparency job's ``--repeat``: N bare/watched pairs, the median CPU ratio quoted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_repeat_quotes_the_median_of_every_pair(tmp_path: Path) -> None:
    # One small test_asyncio file, three pairs: a few seconds.
    done = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "transparency.py"), sys.executable,
         "--tests", "test_context", "--repeat", "3", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
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
