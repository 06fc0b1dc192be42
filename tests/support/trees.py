"""A tree as the comparable facts of its entries, and what differs between two trees."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

Entry = tuple[object, ...]


def tree(root: Path) -> tuple[dict[str, Entry], list[list[str]]]:
    """Every entry's attributes, and the hard-link groups (same inode) of non-directories."""
    entries: dict[str, Entry] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        names = [*dirnames, *filenames]
        paths = [here / n for n in names]
        if here == root:
            paths.insert(0, here)
        for path in paths:
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                detail = h.hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(
                sorted(
                    (k, os.getxattr(path, k, follow_symlinks=False))
                    for k in os.listxattr(path, follow_symlinks=False)
                )
            )
            entries[rel] = (
                stat.filemode(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if not stat.S_ISDIR(st.st_mode) else None,
                detail,
                xattrs,
                st.st_mtime_ns,
            )
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
    groups = sorted(sorted(g) for g in inodes.values())
    return entries, groups


FIELDS = ("mode", "uid", "gid", "size", "content", "xattrs", "mtime")


def differences(ours: dict[str, Entry], theirs: dict[str, Entry]) -> list[str]:
    out = []
    for path in sorted(set(ours) | set(theirs)):
        a, b = ours.get(path), theirs.get(path)
        if a == b:
            continue
        if a is None or b is None:
            out.append(f"{path}: only in {'umoci' if a is None else 'cos'}")
            continue
        fields = [f"{f} {x!r} != {y!r}" for f, x, y in zip(FIELDS, a, b, strict=True) if x != y]
        out.append(f"{path}: " + "; ".join(fields))
    return out
