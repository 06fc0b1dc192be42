"""The kernel's mount table (/proc/self/mountinfo) and block devices found by label."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cos import run as runner


def _mountinfo() -> list[list[str]]:
    try:
        return [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        return []


def _unescape(text: str) -> str:
    return text.replace("\\040", " ")


def mount_table() -> list[tuple[str, str]]:
    """(source, mount point) for every mount, in mount order."""
    out = []
    for fields in _mountinfo():
        sep = fields.index("-")
        out.append((fields[sep + 2], _unescape(fields[4])))
    return out


def mount_options(path: Path) -> set[str] | None:
    """Options of the topmost mount at path (None when path is not a mount point)."""
    target = os.path.realpath(path)
    found: set[str] | None = None
    for fields in _mountinfo():
        if _unescape(fields[4]) == target:
            found = set(fields[5].split(","))
    return found


def mount_point_of(path: Path) -> str:
    """The mount point of the filesystem path is on (the longest mounted prefix)."""
    target = os.path.realpath(path)
    best = "/"
    for _, mnt in mount_table():
        if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
            best = mnt
    return best


def is_mountpoint(path: Path) -> bool:
    return mount_options(path) is not None


def find_device(label: str, timeout: float = 0.0) -> str | None:
    """Resolve a filesystem label to a device node, waiting up to timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        link = Path("/dev/disk/by-label") / label
        if link.exists():
            return str(link.resolve())
        res = runner.run(["blkid", "-L", label], check=False)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)
