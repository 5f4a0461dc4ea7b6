"""The README is read by users who have only this repository: every file it points at must be in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
# a Markdown link target or a backticked path with a folder and a file extension, e.g. `pitstop/demo/demo.toml`
_LINK = re.compile(r"\]\(([^)#\s]+)\)")
_PATH = re.compile(r"`([A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+\.[a-z]{2,5})`")


def test_every_file_the_readme_names_exists() -> None:
    """Links and file paths in README.md resolve inside the repository (no pointers to outside it)."""
    text = (ROOT / "README.md").read_text()
    named = {m for m in _LINK.findall(text) if "://" not in m} | set(_PATH.findall(text))
    named = {p for p in named if not p.startswith("./")}  # `./pitstop.toml`: the user's own file, in their folder
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README.md names files that are not in the repository: {missing}"
    assert named, "the README names no files at all: the patterns above no longer match it"
