"""The kernel's mount table, read from /proc/self/mountinfo."""

from __future__ import annotations

import os
from pathlib import Path


def mount_table() -> list[tuple[str, str]]:
    """(source, mount point) for every mount, in mount order."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        out.append((fields[sep + 2], fields[4].replace("\\040", " ")))
    return out


def is_mountpoint(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(mnt == target for _, mnt in mount_table())
