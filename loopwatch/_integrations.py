"""The operator files that ship with the package, and ``loopwatch integrations export``.

The repository keeps them in ``integrations/`` at its root (what operators browse); the
wheel carries the same files as package data under ``loopwatch/integrations/``. In a
source checkout (an editable install) they are read from the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["FILES", "export", "source_dir"]

# What an operator loads, relative to the integrations directory. The dashboard builder
# stays in the repository: the JSON it writes is what ships.
FILES = (
    "README.md",
    "grafana/loopwatch.json",
    "prometheus/alerts.yml",
    "prometheus/scrape.yml",
    "gunicorn/gunicorn.conf.py",
)

_PACKAGED = Path(__file__).resolve().parent / "integrations"
_CHECKOUT = Path(__file__).resolve().parent.parent / "integrations"


def source_dir() -> Path:
    """Where the operator files are: the package data, else the source checkout's copy."""
    for candidate in (_PACKAGED, _CHECKOUT):
        if all((candidate / name).is_file() for name in FILES):
            return candidate
    raise FileNotFoundError(
        "loopwatch's operator files are missing from this installation "
        f"(looked in {_PACKAGED} and {_CHECKOUT}); reinstall loopwatch"
    )


def export(dest: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Copy the operator files into ``dest`` (created if needed); return the paths written.

    Refuses (``FileExistsError``, naming the files) to overwrite anything unless ``force``.
    """
    source = source_dir()
    target = Path(dest)
    planned = [(source / name, target / name) for name in FILES]
    clashes = [str(out) for _, out in planned if out.exists()]
    if clashes and not force:
        raise FileExistsError(
            "would overwrite " + ", ".join(clashes) + " (use --force to replace them)"
        )
    written = []
    for src, out in planned:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        written.append(out)
    return written
