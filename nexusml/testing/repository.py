"""The repository's own files, as git sees them: what a scan of the tree or the device tool's carry covers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def repository_files(root: Path) -> list[Path]:
    """The files git keeps or would keep under `root` (tracked, and untracked but not ignored): not a venv, a GPU
    bundle's install or anything else `.gitignore` leaves out. Raises `RuntimeError` with git's message when git
    cannot list them (no git, not a checkout)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True
    )
    if listed.returncode:
        raise RuntimeError(f"git ls-files in {root}: {listed.stderr.decode(errors='replace').strip()}")
    return [root / os.fsdecode(name) for name in listed.stdout.split(b"\0") if name]
