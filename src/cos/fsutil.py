"""Crash-safe file writes and path confinement, shared by every layer."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Replace path so that a crash leaves either the old or the new content.

    temp file in the same directory → write → fsync → rename → fsync the directory.
    """
    raw = data.encode() if isinstance(data, str) else data
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point link at target atomically (symlink to a temp name, then rename over)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def inside(root: Path, path: str | os.PathLike[str]) -> Path:
    """Join an absolute in-image path onto root lexically, refusing escapes via '..'."""
    rel = Path(os.path.normpath("/" + os.fspath(path).lstrip("/")))
    joined = Path(root) / rel.relative_to("/")
    return joined


def dir_size(path: Path) -> int:
    """Apparent size in bytes of a tree (files counted once per inode)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        total += 4096 * len(dirnames)
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total
