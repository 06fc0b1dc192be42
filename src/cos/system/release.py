"""Reading /etc/os-release of an image tree or the running system."""

from __future__ import annotations

import shlex
from pathlib import Path

from cos.fsutil import regular_file_in_tree


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            continue
        out[key.strip()] = parts[0] if parts else ""
    return out


def read_os_release(root: Path) -> dict[str, str]:
    """os-release of the tree at root, resolving its symlinks inside root only."""
    for rel in ("/etc/os-release", "/usr/lib/os-release"):
        p = regular_file_in_tree(root, rel)
        if p is not None:
            return parse_os_release(p.read_text(errors="replace"))
    return {}
