"""Reading /etc/os-release of an image tree or the running system."""

from __future__ import annotations

import shlex
from pathlib import Path


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
    for rel in ("etc/os-release", "usr/lib/os-release"):
        p = root / rel
        if p.is_symlink():
            target = Path(p.readlink())
            p = (p.parent / target) if not target.is_absolute() else root / target.relative_to("/")
        if p.is_file():
            return parse_os_release(p.read_text(errors="replace"))
    return {}
