"""Atomic file writes: a reader, or a run killed mid-write, never sees half a file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary sibling and os.replace; leave the file alone (mtime too) if the content is unchanged."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished folder `tmp` to `folder`, replacing what is there: a reader sees the old folder or the new
    one, never a mix (two renames; only the old one's deletion comes after)."""
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
