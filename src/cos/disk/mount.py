"""Mounting and unmounting, with the retries a busy system needs.

Upgrades mount the new snapshot image through a loop device and remount the state
partition read-write for the time of a change; the context managers here make sure
that every mount made is undone, and that a busy unmount is retried, never ignored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cos import run as runner
from cos.disk.mounts import mount_options
from cos.errors import ToolError
from cos.log import log


def mount(source: Path | str, target: Path, options: str = "", fstype: str | None = None) -> None:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    runner.run([*argv, str(source), str(target)])


def umount(target: Path, attempts: int = 5, delay: float = 0.5) -> None:
    """Unmount, retrying while busy; the last failure is raised."""
    for i in range(attempts):
        try:
            os.sync()
            runner.run(["umount", str(target)])
            return
        except ToolError:
            if i == attempts - 1:
                raise
            log.debug("umount %s busy, retrying", target)
            time.sleep(delay * (i + 1))


@contextmanager
def mounted(
    source: Path | str, target: Path, options: str = "", fstype: str | None = None
) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount(source, target, options, fstype)
    try:
        yield target
    finally:
        umount(target)


@contextmanager
def writable(path: Path) -> Iterator[Path]:
    """Remount the filesystem mounted at path read-write for the block, then read-only.

    A path that is not a read-only mount point is used as it is (already writable,
    e.g. a disk mounted by hand for maintenance).
    """
    opts = mount_options(path)
    if opts is None or "ro" not in opts:
        yield path
        return
    runner.run(["mount", "-o", "remount,rw", str(path)])
    try:
        yield path
    finally:
        os.sync()
        for i in range(5):
            try:
                runner.run(["mount", "-o", "remount,ro", str(path)])
                break
            except ToolError:
                if i == 4:
                    log.warning("%s stays read-write: it is busy", path)
                time.sleep(0.5 * (i + 1))
