"""The kernel's mount table (/proc/self/mountinfo) and block devices found by label."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cos import run as runner
from cos.errors import DiskError


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


def mount_source(path: Path) -> str | None:
    """The device of the topmost mount at path (None when path is not a mount point)."""
    target = os.path.realpath(path)
    found = None
    for source, point in mount_table():
        if point == target:
            found = source
    return found


def disk_of(device: str) -> str:
    """The whole disk a partition is on (itself for a whole disk), from sysfs."""
    name = Path(device).resolve().name
    node = Path("/sys/class/block") / name
    if (node / "partition").exists():
        return node.resolve().parent.name
    return name


class AmbiguousLabel(DiskError):
    """A label on several devices: two cos disks attached to one machine."""

    def __init__(self, label: str, devices: list[str]):
        super().__init__(
            f"label {label} is on several devices ({', '.join(devices)}):"
            " cos cannot tell which one belongs to this system",
            hint="detach the other disk, or relabel its partitions (e2label, fatlabel)",
        )
        self.devices = devices


def labelled(label: str) -> list[str]:
    """Every device that carries label: udev's link and a fresh probe (no blkid cache)."""
    found = set()
    link = Path("/dev/disk/by-label") / label
    if link.exists():
        found.add(str(link.resolve()))
    probe = ["blkid", "-c", "/dev/null", "-o", "device", "-t", f"LABEL={label}"]
    res = runner.run(probe, check=False)
    if res.returncode == 0:
        found.update(str(Path(d).resolve()) for d in res.stdout.split())
    return sorted(found)


def find_device(label: str, timeout: float = 0.0, near: str | None = None) -> str | None:
    """Resolve a filesystem label to a device node, waiting up to timeout seconds.

    When the label is on several devices (a second installed disk, a disk image
    attached to a recovery system), the one on the same disk as near (this system's
    state or recovery partition) is taken; when that does not decide, AmbiguousLabel:
    a reset must never format another system's partition because it was probed first.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = labelled(label)
        if len(found) == 1:
            return found[0]
        if found:
            if near is not None:
                home = disk_of(near)
                mine = [d for d in found if disk_of(d) == home]
                if len(mine) == 1:
                    return mine[0]
            raise AmbiguousLabel(label, found)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)
