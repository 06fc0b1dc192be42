"""Crash-safe file writes, path confinement and tree sizes, shared by every layer."""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path


def ceil_div(n: int, unit: int) -> int:
    """How many units hold n (n // unit rounded up); ceil_div(n, u) * u rounds n up to u."""
    return -(-n // unit)


def fsync_path(path: Path) -> None:
    """Make a file's (or a directory's entries') content durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path)


EXT4_IOC_CHECKPOINT = 0x4004662B  # _IOW('f', 43, __u32): linux/ext4.h, since 5.13


def checkpoint(path: Path) -> bool:
    """Write the journal of path's filesystem out to the blocks' own places (ext4).

    GRUB reads ext4 without replaying its journal: a durable rename is in the journal
    only, and the kernel writes its blocks in place later, in any order. A power cut
    while it does can show GRUB a link whose target is not there yet. Checkpointed
    before and after a switch, what GRUB reads is the old state or the new one. Best
    effort (another filesystem, no journal, an older kernel: False), as the kernel's
    own writeback is what remains then."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.ioctl(fd, EXT4_IOC_CHECKPOINT, struct.pack("I", 0))
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def atomic_write(
    path: Path, data: bytes | str, mode: int = 0o644, uid: int = -1, gid: int = -1
) -> None:
    """Replace path so that a crash leaves either the old or the new content.

    A private temp file (0600 until its owner and mode are set) in the same directory →
    write → fsync → rename → fsync the directory.
    """
    raw = data.encode() if isinstance(data, str) else data
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if uid != -1 or gid != -1:
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point link at target atomically (symlink to a temp name, then rename over).

    Every such link is one GRUB follows (a snapshot's `active`, the recovery's `boot`),
    so the filesystem is checkpointed before the rename (the target's files in place
    before the link names them) and after it (the link itself in place)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    checkpoint(link.parent)
    os.replace(tmp, link)
    fsync_dir(link.parent)
    checkpoint(link.parent)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding path."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def ram_room(path: Path) -> int:
    """Bytes that may go to path (the run directory, a tmpfs) without pressing on
    memory: its free space, at most what the kernel reports available; 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(x.split()[1]) * 1024 for x in f if x.startswith("MemAvailable:"))
        return min(free_bytes(path), avail)
    except (OSError, ValueError, StopIteration):
        return 0


def inside(root: Path, path: str | os.PathLike[str]) -> Path:
    """Join an absolute in-image path onto root lexically, refusing escapes via '..'."""
    rel = Path(os.path.normpath("/" + os.fspath(path).lstrip("/")))
    joined = Path(root) / rel.relative_to("/")
    return joined


def resolve_in_tree(tree: Path, path: str) -> Path | None:
    """Resolve an in-image path the way the booted image would, never leaving tree.

    Absolute symlink targets are re-rooted at tree and '..' stops at tree's root, so an
    image cannot make a build read the host's files through its symlinks. Returns None
    when the path does not exist (or loops).
    """
    try:
        p = confine(tree, path)
    except OSError:
        return None
    return p if p.exists() else None


def confine(root: Path, path: str) -> Path:
    """Host path for an in-root path, with every existing symlink resolved inside root.

    Components that do not exist yet are appended as they are ('..' never climbs above
    root), so a later mkdir/open/chmod on the result cannot be led out of root by a
    symlink that existed when it was resolved.
    """
    root = Path(root)
    parts = list(Path("/" + path.lstrip("/")).parts[1:])
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(40, "too many levels of symbolic links", str(host))
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in Path(target).parts if p != "/"] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def regular_file_in_tree(tree: Path, path: str) -> Path | None:
    """resolve_in_tree, and only a regular file (not a device, fifo or directory)."""
    p = resolve_in_tree(tree, path)
    if p is None or p.is_symlink() or not stat.S_ISREG(p.lstat().st_mode):
        return None
    return p


BLOCK = 4096


@dataclass(frozen=True)
class TreeUsage:
    bytes: int  # space the tree takes in 4 KiB blocks
    entries: int  # inodes it needs


def tree_usage(path: Path) -> TreeUsage:
    """Block-rounded size and entry count of a tree (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    entries = 0
    for dirpath, dirnames, filenames in os.walk(path):
        entries += len(dirnames)
        total += BLOCK * len(dirnames)
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            entries += 1
            if stat.S_ISREG(st.st_mode) or (stat.S_ISLNK(st.st_mode) and st.st_size > 59):
                total += ceil_div(st.st_size, BLOCK) * BLOCK
    return TreeUsage(total, entries)
