"""One OCI layer as an overlayfs lower layer: a tree of its own, deletions in overlayfs form.

Sharing snapshots do not apply the layers of an image into one tree: each layer
becomes a read-only filesystem image and overlayfs stacks them. Overlayfs reads
deletions from the layer itself, spelled differently from OCI: a whiteout is a
character device 0/0 named like the deleted entry (OCI: ``.wh.NAME``), an opaque
directory carries the xattr ``trusted.overlay.opaque=y`` (OCI: ``.wh..wh..opq``).
Everything else is unpacked by the same unpacker, with the same containment, tar header
limits (cos.oci.streams) and digest checks, so the stack shows what applying the layers
shows (checked against the unpacker, entry for entry, by the layers backend's
integration tests).

Refused, because a layer image cannot hold them: a character device 0/0 of the image
itself (overlayfs would take it for a whiteout), and a hard link to a file of a lower
layer (each layer is a filesystem of its own).
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cos.errors import ImageError
from cos.oci.contain import DIR_FLAGS, HOSTILE, join, show
from cos.oci.layout import LayerBlob
from cos.oci.meta import owner, times
from cos.oci.unpack import Unpacker, apply_layers

OPAQUE_XATTR = "trusted.overlay.opaque"
_WH = ".wh."
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class RootEntry:
    """The layer's entry for the root directory: plain unpacking lets the last layer that
    has one decide the root's owner, mode and times, which a stack must repeat on top."""

    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int


class _OverlayUnpacker(Unpacker):
    """Unpacks a single layer into an empty tree, keeping its deletions as overlayfs ones."""

    def __init__(self, root_fd: int) -> None:
        super().__init__(root_fd)
        self.whiteouts: set[str] = set()
        self.opaque: set[str] = set()
        self.root_entry: RootEntry | None = None
        self.declared: set[str] = set()  # directories the layer has an entry for

    def _root_entry(self, m: tarfile.TarInfo) -> None:
        super()._root_entry(m)
        (uid, gid), (atime, mtime) = owner(m), times(m)
        self.root_entry = RootEntry(uid, gid, m.mode & 0o7777, atime, mtime)

    def _whiteout(self, parts: list[str], base: str) -> None:
        opaque = base == _OPAQUE
        if not opaque and base.startswith(_WH + _WH):
            return  # AUFS bookkeeping, not part of the image
        target = base[len(_WH) :]
        if not opaque and target in ("", ".", ".."):
            raise ImageError(
                f"{self.label}: invalid whiteout {show('/'.join(parts))}", hint=HOSTILE
            )
        got = self.tree.walk(parts[:-1], create=True)
        assert got is not None
        pfd, pkey = got
        try:
            self._touch(pkey, pfd)
            if opaque:
                self.opaque.add(pkey)
                return
            key = join(pkey, target)
            self.whiteouts.add(key)
            try:
                os.stat(target, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                self._spend(0)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
                # Owned by root like a whiteout overlayfs makes itself.
        finally:
            os.close(pfd)

    def _dir(
        self, pfd: int, name: str, key: str, m: tarfile.TarInfo, old: os.stat_result | None
    ) -> None:
        super()._dir(pfd, name, key, m, old)
        self.declared.add(key)

    def _special(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        if m.type == tarfile.CHRTYPE and m.devmajor == 0 and m.devminor == 0:
            raise ImageError(
                f"{self.label}: {show(m.name)} is a character device 0/0, which a layer"
                " image cannot hold (overlayfs reads it as a deletion)",
                hint="use `snapshotter: loop` for this image",
            )
        super()._special(pfd, name, m)

    def _link_source(self, m: tarfile.TarInfo) -> tuple[int, str]:
        try:
            return super()._link_source(m)
        except ImageError as exc:
            raise ImageError(
                f"{self.label}: hard link {show(m.name)} points at {show(m.linkname)}, which"
                " is not in the same layer; a layer image cannot hold such a link",
                hint="rebuild the image so links stay inside one layer (`cos rechunk` does),"
                " or use `snapshotter: loop`",
            ) from exc

    def _layer_done(self) -> None:
        """A directory this layer both deletes and re-creates hides the lower one's content;
        opaque markers are set last, as a directory entry clears the xattrs it does not
        carry."""
        for key in self.whiteouts:
            got = self.tree.exact(key)
            if got is None:
                continue
            pfd, name = got
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    self.opaque.add(key)
            finally:
                os.close(pfd)
        for key in self.opaque:
            if not key:
                os.setxattr(self.root, OPAQUE_XATTR, b"y")
                continue
            got = self.tree.exact(key)
            if got is None:
                continue
            pfd, name = got
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
                try:
                    os.setxattr(fd, OPAQUE_XATTR, b"y")
                finally:
                    os.close(fd)
            finally:
                os.close(pfd)


@dataclass(frozen=True)
class LayerTree:
    """A layer unpacked in overlayfs form."""

    root: RootEntry | None  # its entry for /, if any
    implicit: list[str]  # directories made for an entry without one of their own


def unpack_layer(layer: LayerBlob, dest: Path) -> LayerTree:
    """Unpack one layer into a new directory dest in overlayfs form."""
    done = apply_layers([layer], Path(dest), _OverlayUnpacker)
    assert isinstance(done, _OverlayUnpacker)
    implicit = []
    for dirpath, dirnames, _ in os.walk(dest):
        for name in dirnames:
            key = os.path.relpath(os.path.join(dirpath, name), dest)
            if key not in done.declared:
                implicit.append(key)
    return LayerTree(done.root_entry, sorted(implicit))


def adopt_lower(tree: Path, lower: Path, implicit: list[str], label: str) -> None:
    """Give directories a layer made without an entry what the layers below have there,
    as applying the layers would (it writes into the existing directory). A path that
    is a symlink below cannot be stacked: applying would write through it."""
    for key in implicit:
        here = lower
        for part in key.split("/"):
            here = here / part
            if here.is_symlink():
                raise ImageError(
                    f"{label}: {show(key)} passes through a symbolic link of a lower layer,"
                    " which a layer image cannot follow",
                    hint="rebuild the image so each layer names real directories"
                    " (`cos rechunk` does), or use `snapshotter: loop`",
                )
        try:
            st = os.lstat(lower / key)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        target = tree / key
        os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(lower / key, follow_symlinks=False):
            if name != OPAQUE_XATTR:
                os.setxattr(target, name, os.getxattr(lower / key, name))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
