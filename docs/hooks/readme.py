"""MkDocs hook: the site's home page is README.md, with its links into docs/ made relative."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "index.md", content=readme()))
    return files


def readme() -> str:
    text = (ROOT / "README.md").read_text()
    # README links to docs/x.md for GitHub; on the site the pages sit next to the home page.
    return re.sub(r"\]\(docs/", "](", text)
