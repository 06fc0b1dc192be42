"""Layers written so the same files always give the same bytes, and a tree's fingerprint.

A layer's digest is what a device compares to decide whether to download it, so a
layer made twice from the same files must come out byte for byte the same, whatever
the order a directory lists its entries in or where the tree was unpacked. The rules:

* entries sorted by path (bytes), a hard link's target is its first name in that order;
* POSIX pax format; a pax record only where ustar cannot say it (long or non-ASCII
  names, sub-second or negative mtimes, xattrs as ``SCHILY.xattr.*``), records in a
  fixed order; uname and gname are always empty (owners are numeric); no atime or
  ctime; mode is the permission bits, devices carry major and minor;
* mtimes are kept as the files have them; with ``SOURCE_DATE_EPOCH`` set, every mtime
  later than it is lowered to it (what a build stamped with "now": the initrd, caches,
  dpkg's status) and the equality check applies the same clamp to the source; a
  directory no source layer had an entry for (often the root) has the time of the
  unpack, and gets the image's creation time instead (Mtimes);
* gzip through zlib at level 6 with a fixed header (no name, mtime 0, OS unix); the
  uncompressed stream (the diff_id) depends only on the files, the compressed one
  also on the zlib build, as for every tool that writes gzip layers.

``security.selinux`` is never written (it is host policy, and cos's unpacker ignores
it), and ``trusted.overlay.overlay.*`` as the unpacker stores escaped overlay xattrs
goes back to ``trusted.overlay.*``.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from cos.errors import ImageError
from cos.oci.digest import blob_path

GZIP_LEVEL = 6
_CHUNK = 1 << 20
_SKIPPED_XATTRS = frozenset({"security.selinux"})
_ESCAPED = "trusted.overlay.overlay."
_TYPES: dict[int, bytes] = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}


def sort_key(path: str) -> bytes:
    return os.fsencode(path)


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below root (relative, '' for root itself) with its lstat, in any order."""
    yield "", os.lstat(root)
    todo = [""]
    while todo:
        rel = todo.pop()
        with os.scandir(root / rel if rel else root) as it:
            for e in it:
                path = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                yield path, st
                if stat.S_ISDIR(st.st_mode):
                    todo.append(path)


def read_xattrs(full: Path) -> list[tuple[str, bytes]]:
    """The xattrs an entry carries in a layer, sorted by name."""
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in names:
        if name in _SKIPPED_XATTRS:
            continue
        value = os.getxattr(full, name, follow_symlinks=False)
        if name.startswith(_ESCAPED):
            name = "trusted.overlay." + name[len(_ESCAPED) :]
        out.append((name, value))
    return sorted(out)


@dataclass(frozen=True)
class Mtimes:
    """Which mtimes a layer records other than the file's own.

    clamp: SOURCE_DATE_EPOCH (seconds); later mtimes are lowered to it.
    unpacked_at: when the source tree was unpacked (ns). A directory no layer had an
    entry for (the root of most images, parents made implicitly) carries the time of
    that unpack, which says nothing about the image; such directories get stand_in.
    """

    clamp: int | None = None
    unpacked_at: int | None = None
    stand_in: int = 0

    def of(self, st: os.stat_result) -> int:
        mtime = st.st_mtime_ns
        if self.unpacked_at is not None and stat.S_ISDIR(st.st_mode) and mtime >= self.unpacked_at:
            mtime = self.stand_in
        if self.clamp is not None and mtime > self.clamp * 1_000_000_000:
            return self.clamp * 1_000_000_000
        return mtime


_OWN = Mtimes()


def _mtime_text(ns: int) -> str:
    text = format(Decimal(ns).scaleb(-9), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def tar_info(
    root: Path, path: str, st: os.stat_result, link: str | None, times: Mtimes = _OWN
) -> tarfile.TarInfo:
    """The canonical header of one entry (link: the first name of a hard-linked file)."""
    info = tarfile.TarInfo(path if path else ".")
    kind = stat.S_IFMT(st.st_mode)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    mtime = times.of(st)
    pax: dict[str, str] = {}
    if mtime % 1_000_000_000 or mtime < 0:
        pax["mtime"] = _mtime_text(mtime)
        info.mtime = max(0, mtime // 1_000_000_000)
    else:
        info.mtime = mtime // 1_000_000_000
    for name, value in read_xattrs(root / path if path else root):
        pax["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    if link is not None:
        info.type = tarfile.LNKTYPE
        info.linkname = link
        return info
    if kind not in _TYPES:
        raise ImageError(
            f"/{path} is a socket: a layer cannot hold one",
            hint="remove it from the tree (a running service makes it again)",
        )
    info.type = _TYPES[kind]
    if kind == stat.S_IFREG:
        info.size = st.st_size
    elif kind == stat.S_IFLNK:
        info.linkname = os.readlink(root / path)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    return info


class _GzipSink:
    """Takes the tar stream: hashes it (diff_id), gzips it, hashes and writes the blob."""

    def __init__(self, out: Path) -> None:
        self.f = open(out, "wb")  # noqa: SIM115 - closed in finish()
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.size = 0
        self.written = 0
        # wbits 31: a gzip wrapper with mtime 0, no file name, OS unix
        self.z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31, 9)

    def _out(self, data: bytes) -> None:
        if data:
            self.blob.update(data)
            self.size += len(data)
            self.f.write(data)

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self.written += len(data)
        self._out(self.z.compress(data))
        return len(data)

    def tell(self) -> int:
        return self.written

    def read(self, size: int) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def seek(self, pos: int) -> int:
        raise io.UnsupportedOperation("a stream")

    def close(self) -> None:
        """finish() ends the stream; TarFile closing it is a no-op."""

    def finish(self) -> None:
        self._out(self.z.flush())
        self.f.close()


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzip blob
    size: int
    diff_id: str  # of the tar stream
    groups: tuple[str, ...]


def write_layer(
    root: Path,
    entries: Sequence[tuple[str, os.stat_result]],
    out_dir: Path,
    groups: Sequence[str],
    times: Mtimes = _OWN,
) -> Layer:
    """Write entries of the tree at root as one gzip layer blob into the layout out_dir."""
    blobs = out_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".layer-", suffix=".partial", dir=blobs)
    os.close(fd)
    tmp = Path(name)
    sink = _GzipSink(tmp)
    first: dict[tuple[int, int], str] = {}
    try:
        with tarfile.TarFile(
            fileobj=sink,
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            for path, st in sorted(entries, key=lambda e: sort_key(e[0])):
                link = None
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    link = first.get((st.st_dev, st.st_ino))
                    first.setdefault((st.st_dev, st.st_ino), path)
                info = tar_info(root, path, st, link, times)
                if info.type == tarfile.REGTYPE:
                    with open(root / path, "rb") as f:
                        tf.addfile(info, f)
                else:
                    tf.addfile(info)
        sink.finish()
        digest = "sha256:" + sink.blob.hexdigest()
        os.replace(tmp, blob_path(out_dir, digest))
    finally:
        if not sink.f.closed:
            sink.f.close()
        tmp.unlink(missing_ok=True)
    return Layer(digest, sink.size, "sha256:" + sink.diff.hexdigest(), tuple(groups))


# --- what must be equal -------------------------------------------------------------


Fingerprint = dict[str, tuple[object, ...]]


def _file_hash(full: Path) -> str:
    h = hashlib.sha256()
    with open(full, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(
    root: Path, times: Mtimes = _OWN, progress: Callable[[], None] | None = None
) -> Fingerprint:
    """Per path: type, permissions, owner, size and content hash, link target, device,
    xattrs, mtime (as layers record it: times) and, for a file with several names,
    its first name. Two trees with equal fingerprints unpack to the same system."""
    found = list(walk(root))
    first: dict[tuple[int, int], str] = {}
    for path, st in sorted(found, key=lambda e: sort_key(e[0])):
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            first.setdefault((st.st_dev, st.st_ino), path)
    out: Fingerprint = {}
    for path, st in found:
        full = root / path if path else root
        kind = stat.S_IFMT(st.st_mode)
        content: object = None
        if kind == stat.S_IFREG:
            content = _file_hash(full)
        elif kind == stat.S_IFLNK:
            content = os.readlink(full)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            content = (os.major(st.st_rdev), os.minor(st.st_rdev))
        out["/" + path] = (
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size if kind == stat.S_IFREG else 0,
            content,
            tuple(read_xattrs(full)),
            times.of(st),
            first.get((st.st_dev, st.st_ino), "") if kind != stat.S_IFDIR else "",
        )
        if progress is not None:
            progress()
    return out


_FIELDS = ("type", "mode", "uid", "gid", "size", "content", "xattrs", "mtime", "hard link")


def differences(a: Fingerprint, b: Fingerprint, limit: int = 5) -> list[str]:
    """What differs between two fingerprints, as short lines (at most limit)."""
    out: list[str] = []
    for path in sorted(a.keys() | b.keys(), key=sort_key):
        if path not in b:
            out.append(f"{path}: missing")
        elif path not in a:
            out.append(f"{path}: extra")
        elif a[path] != b[path]:
            what = [f for f, x, y in zip(_FIELDS, a[path], b[path], strict=True) if x != y]
            out.append(f"{path}: {', '.join(what)}")
        if len(out) >= limit:
            break
    return out
