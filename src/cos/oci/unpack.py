"""Applying OCI image layers to a directory without trusting what the layers contain.

Why our own unpacker instead of `umoci raw unpack`: an image is untrusted input until
it is booted, and the property that matters most — nothing outside the target
directory changes, whatever the layers contain — is one we want to state in code and
test shape by shape (tests/support/malicious_layers.py holds the corpus, drawn from
the CVEs of docker, containerd, umoci, GNU tar and Python's tarfile). Doing it
in-process also lets us check the blob digest, its size and the uncompressed digest
(the config's diff_id) on the very bytes being applied, while they stream, and saves
an external process and its error-message scraping.

The work is split by concern: cos.oci.contain keeps every write inside the target (the
security argument is stated there), cos.oci.streams reads, decompresses and hashes
the blob, cos.oci.meta sets owners, modes, xattrs and times, and this module applies
entries in order: whiteouts, files, links, directories and their times.

umoci behaviours matched (so the trees compare equal with `umoci raw unpack`):

* The root ends up root:root 0755 unless a layer carries an entry for ``./``, whose
  owner, mode, xattrs and times then apply (umoci applies that entry to the rootfs).
* A directory's times are those of its own entry: umoci restores the parent's
  metadata after each entry, we set the times of every directory a layer touched once
  the layer is done (entries inside it would otherwise move them to "now"). Where
  umoci's per-entry restore misses — a directory made implicitly for a child (it has
  no entry of its own: both tools give it the time of the unpack, umoci then leaves
  its parent's time moved too), or a whiteout clearing lower children of a directory
  the same layer declares — we keep the declared times. Real layers, built by diffing
  trees, have an entry for every directory, and there the trees are identical.
* An mtime of 0 is kept (the epoch); the atime is the PAX atime, else the mtime.
* A directory entry over an existing directory only replaces its attributes: the old
  xattrs are cleared first (umoci ``Lclearxattrs``) — except ``security.selinux``,
  which is never taken from an image as it is host policy.
* Hard links carry no metadata of their own; a whiteout removes only what lower
  layers made (umoci's "upper paths"), so entries of the same layer survive it
  whatever their order, and an opaque marker acts as if it came first.
* A root entry that is not a directory is refused, as is an entry whose parent is a
  non-directory (umoci's MkdirAll fails there too).

Deliberate differences: ``trusted.overlay.*`` xattrs are written escaped as
``trusted.overlay.overlay.*`` (what umoci >= 0.5 does; umoci 0.4.7 writes them as
they are and would let an image steer an overlayfs that later uses the tree as a
layer); names that climb out with ``..`` are refused rather than clamped; PAX
``LIBARCHIVE.xattr.*`` records are honoured (Go's tar reader ignores them); a corrupt
header in the middle of a layer is an error (Python's tarfile would silently end the
archive there). Like umoci: a path given twice in one layer takes its last entry, GNU
sparse files are written out dense, and tar has no socket entries to skip.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

from cos.errors import ImageError
from cos.oci.contain import (
    DIR_FLAGS,
    HOSTILE,
    Root,
    clean,
    empty_mountpoint,
    join,
    remove,
    remove_tree,
    show,
)
from cos.oci.layout import LayerBlob, OciLayout
from cos.oci.meta import MetaWriter, owner, times, xattrs
from cos.oci.streams import entries, layer_tar

MAX_ENTRIES = 10_000_000  # per unpack, on top of the inode check
_COPY = 1 << 20
_BLOCK = 4096

_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_REGULAR = frozenset(tarfile.REGULAR_TYPES)
_DEVICES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}


def unpack_layers(layers: Sequence[tuple[Path, str]], dest: Path) -> None:
    """Apply layer blobs (base first, as (blob file, media type)) to a new directory dest."""
    n = len(layers)
    apply_layers(
        [
            LayerBlob(Path(p), mt, f"layer {i}/{n} ({Path(p).name[:12]})")
            for i, (p, mt) in enumerate(layers, 1)
        ],
        Path(dest),
    )


def unpack_image(layout: Path, manifest_digest: str, dest: Path) -> None:
    """Apply the layers of a manifest in an OCI layout to a new directory dest.

    Every blob read is checked against its descriptor (sha256 and size) and every
    layer's uncompressed stream against the config's diff_id, so the tree is made only
    of the content the manifest digest (the thing signatures cover) pins.
    """
    layout = Path(layout)
    if os.path.lexists(dest) and not _fresh_mountpoint(Path(dest)):
        raise _exists(Path(dest))
    apply_layers(OciLayout(layout).image_layers(manifest_digest), Path(dest))


# --- the unpacker ---------------------------------------------------------------------


def _exists(dest: Path) -> ImageError:
    return ImageError(
        f"{dest} already exists",
        hint="unpack into a directory that does not exist yet (or an empty filesystem)",
    )


def _fresh_mountpoint(dest: Path) -> bool:
    """A directory that is empty but for an empty lost+found: a new filesystem, mounted
    to receive the tree (snapshot images are filled this way)."""
    try:
        if not stat.S_ISDIR(os.lstat(dest).st_mode):
            return False
        names = os.listdir(dest)
        return all(n == "lost+found" for n in names) and not any(
            os.listdir(dest / n) for n in names
        )
    except OSError:
        return False


def apply_layers(
    layers: Sequence[LayerBlob], dest: Path, unpacker: type[Unpacker] | None = None
) -> Unpacker:
    """Apply layers (base first) to a new directory (or a fresh filesystem) dest; on any
    error dest is left as it was found."""
    unpacker = unpacker or Unpacker
    created = True
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        if not _fresh_mountpoint(dest):
            raise _exists(dest) from None
        created = False
        os.chmod(dest, 0o700)  # final owner and mode are set when the tree is complete
    except OSError as exc:
        raise ImageError(
            f"cannot create {dest}: {exc.strerror}", hint="check the parent directory"
        ) from exc
    ok = False
    try:
        root_fd = os.open(dest, DIR_FLAGS)
        try:
            done = unpacker(root_fd)
            done.run(layers)
        finally:
            os.close(root_fd)
        ok = True
    except OSError as exc:
        raise ImageError(f"unpacking into {dest} failed: {exc}") from exc
    finally:
        if not ok:
            if created:
                remove_tree(dest)
            else:
                empty_mountpoint(dest)
    return done


class Unpacker:
    """Applies layers, base first, to the tree open at root_fd (kept 0700 until the end)."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self.label = ""
        self.upper: set[str] = set()  # what the current layer made (and their ancestors)
        self.dir_times: dict[str, tuple[int, int]] = {}  # dirs the layer touched
        self.root_owner = (0, 0)
        self.root_mode = 0o755
        self.entries = 0
        vfs = os.fstatvfs(root_fd)
        self.avail = vfs.f_bavail * vfs.f_frsize
        self.inodes = vfs.f_favail if vfs.f_files else None
        self.tree = Root(root_fd, self._before_mkdir)
        self.meta = MetaWriter()

    def run(self, layers: Sequence[LayerBlob]) -> None:
        for layer in layers:
            self.label = layer.label
            self.upper = set()
            self.dir_times = {}
            self._layer(layer)
            self._layer_done()
            self._fix_dir_times()
        os.fchown(self.root, *self.root_owner)
        os.fchmod(self.root, self.root_mode)

    # -- one layer

    def _layer(self, layer: LayerBlob) -> None:
        with layer_tar(layer) as tf:
            for m in entries(tf):
                self._entry(tf, m)

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise ImageError(f"{self.label}: more than {MAX_ENTRIES} entries", hint=HOSTILE)
        parts = clean(m.name, "entry")
        try:
            if not parts:
                self._root_entry(m)
                return
            base = parts[-1]
            if base.startswith(_WH):
                self._whiteout(parts, base)
                return
            self._create(tf, m, parts)
        except (OSError, ValueError, OverflowError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ImageError(
                f"{self.label}: cannot unpack {show(m.name)}: {detail}",
                hint="the target filesystem must be writable, have room, and support "
                "ownership, device nodes and xattrs (unpack as root)",
            ) from exc

    def _layer_done(self) -> None:
        """After a layer's entries, before its directories get their times back."""

    # -- bookkeeping

    def _before_mkdir(self, parent: str, fd: int) -> None:
        self._touch(parent, fd)
        self._spend(_BLOCK)

    def _touch(self, key: str, fd: int) -> None:
        """Remember a directory's times before the layer changes its content."""
        if key not in self.dir_times:
            st = os.fstat(fd)
            self.dir_times[key] = (st.st_atime_ns, st.st_mtime_ns)

    def _made(self, key: str) -> None:
        upper = self.upper
        while key not in upper:
            upper.add(key)
            if not key:
                break
            cut = key.rfind("/")
            key = key[:cut] if cut >= 0 else ""

    def _spend(self, nbytes: int) -> None:
        """Refuse a layer that would fill the target filesystem (space or inodes)."""
        self.avail -= nbytes
        if self.inodes is not None:
            self.inodes -= 1
        if self.avail >= 0 and (self.inodes is None or self.inodes >= 0):
            return
        vfs = os.fstatvfs(self.root)  # the estimate ran out: ask again (removals free space)
        self.avail = vfs.f_bavail * vfs.f_frsize - nbytes
        self.inodes = vfs.f_favail - 1 if vfs.f_files else None
        if self.avail < 0:
            raise ImageError(
                f"{self.label} does not fit: {nbytes} more bytes would exceed the free "
                "space of the target filesystem",
                hint="free space on the target filesystem (or the layer is a decompression bomb)",
            )
        if self.inodes is not None and self.inodes < 0:
            raise ImageError(
                f"{self.label} does not fit: the target filesystem has no free inodes left",
                hint="use a filesystem with more inodes",
            )

    def _fix_dir_times(self) -> None:
        for key, (atime, mtime) in self.dir_times.items():
            if not key:
                os.utime(self.root, ns=(atime, mtime))
                continue
            got = self.tree.exact(key)
            if got is None:
                continue
            pfd, name = got
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.utime(name, dir_fd=pfd, follow_symlinks=False, ns=(atime, mtime))
            except FileNotFoundError:
                pass
            finally:
                os.close(pfd)

    # -- entries

    def _root_entry(self, m: tarfile.TarInfo) -> None:
        if m.type != tarfile.DIRTYPE:
            raise ImageError(
                f"{self.label}: the root entry {show(m.name)} is not a directory",
                hint=HOSTILE,
            )
        # Owner and mode wait for the end: the tree stays private while it is built.
        self.root_owner = owner(m)
        self.root_mode = m.mode & 0o7777
        self.meta.set_xattrs(self.root, xattrs(m), clear=True)
        self.dir_times[""] = times(m)
        self._made("")

    def _whiteout(self, parts: list[str], base: str) -> None:
        opaque = base == _OPAQUE
        if not opaque and base.startswith(_WH + _WH):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.orph): not part of the image
        target = base[len(_WH) :]
        if not opaque and target in ("", ".", ".."):
            raise ImageError(
                f"{self.label}: invalid whiteout {show('/'.join(parts))}", hint=HOSTILE
            )
        got = self.tree.walk(parts[:-1], create=False)
        if got is None:
            return
        pfd, pkey = got
        try:
            self._touch(pkey, pfd)
            if opaque:
                dfd = os.open(".", DIR_FLAGS, dir_fd=pfd)
                try:
                    self._clear_lower(dfd, pkey)
                finally:
                    os.close(dfd)
            else:
                self._remove_lower(pfd, target, join(pkey, target))
        finally:
            os.close(pfd)

    def _remove_lower(self, pfd: int, name: str, key: str) -> None:
        """Remove what lower layers put at key, keeping what this layer made."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if key not in self.upper:
            remove(pfd, name)
            return
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
            try:
                self._clear_lower(fd, key)
            finally:
                os.close(fd)

    def _clear_lower(self, fd: int, key: str) -> None:
        with os.scandir(fd) as it:
            children = [e.name for e in it]
        for child in children:
            self._remove_lower(fd, child, join(key, child))

    def _create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str]) -> None:
        kind = m.type
        link: tuple[int, str] | None = None
        if kind == tarfile.LNKTYPE:
            link = self._link_source(m)
        try:
            got = self.tree.walk(parts[:-1], create=True)
            assert got is not None
            pfd, pkey = got
            try:
                name = parts[-1]
                key = join(pkey, name)
                self._touch(pkey, pfd)
                try:
                    old: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    old = None
                if kind == tarfile.DIRTYPE:
                    self._dir(pfd, name, key, m, old)
                else:
                    if old is not None:
                        remove(pfd, name)
                    if kind in _REGULAR:
                        self._file(tf, pfd, name, m)
                    elif kind == tarfile.SYMTYPE:
                        self._symlink(pfd, name, m)
                    elif link is not None:
                        self._spend(0)
                        os.link(
                            link[1],
                            name,
                            src_dir_fd=link[0],
                            dst_dir_fd=pfd,
                            follow_symlinks=False,  # link a symlink itself, never its target
                        )
                    elif kind in _DEVICES or kind == tarfile.FIFOTYPE:
                        self._special(pfd, name, m)
                    else:
                        raise ImageError(
                            f"{self.label}: {show(m.name)} has unsupported tar type {kind!r}",
                            hint=HOSTILE,
                        )
                self._made(key)
            finally:
                os.close(pfd)
        finally:
            if link is not None:
                os.close(link[0])

    def _link_source(self, m: tarfile.TarInfo) -> tuple[int, str]:
        """Where a hard link points: resolved inside the root, its last component unfollowed."""
        lparts = clean(m.linkname, f"hard link {show(m.name)} target")
        if not lparts:
            raise ImageError(
                f"{self.label}: hard link {show(m.name)} points at the root", hint=HOSTILE
            )
        got = self.tree.walk(lparts[:-1], create=False)
        if got is not None:
            lfd, _ = got
            try:
                st = os.stat(lparts[-1], dir_fd=lfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return lfd, lparts[-1]
            os.close(lfd)
        raise ImageError(
            f"{self.label}: hard link {show(m.name)} points at {show(m.linkname)}, "
            "which is not a file the layers made",
            hint=HOSTILE,
        )

    def _dir(
        self, pfd: int, name: str, key: str, m: tarfile.TarInfo, old: os.stat_result | None
    ) -> None:
        existing = old is not None and stat.S_ISDIR(old.st_mode)
        if not existing:
            if old is not None:
                remove(pfd, name)
            self._spend(_BLOCK)
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        try:
            self.meta.on_fd(fd, m, clear=existing)
        finally:
            os.close(fd)
        self.dir_times[key] = times(m)

    def _file(self, tf: tarfile.TarFile, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        size = m.size
        if size < 0:
            raise ImageError(f"{self.label}: {show(m.name)} has a negative size", hint=HOSTILE)
        self._spend(-(-size // _BLOCK) * _BLOCK)
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            if size:
                self._copy(tf, m, fd)
            self.meta.on_fd(fd, m)
            os.utime(fd, ns=times(m))
        finally:
            os.close(fd)

    def _copy(self, tf: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
        read: Callable[[int], bytes]
        if m.sparse is not None or tf.fileobj.tell() != m.offset_data:
            data = tf.extractfile(m)
            assert data is not None
            read = data.read
        else:
            read = tf.fileobj.read  # straight from the stream: no per-member wrapper
        left = m.size
        write = os.write
        while left > 0:
            chunk = read(min(left, _COPY))
            if not chunk:
                raise ImageError(f"{self.label}: archive ends inside {show(m.name)}")
            left -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[write(fd, view) :]

    def _symlink(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        if "\0" in m.linkname:
            raise ImageError(
                f"{self.label}: symlink {show(m.name)} target contains a NUL byte", hint=HOSTILE
            )
        self._spend(0)
        os.symlink(m.linkname, name, dir_fd=pfd)
        self.meta.at(pfd, name, m, chmod=False)

    def _special(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        self._spend(0)
        if m.type == tarfile.FIFOTYPE:
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            dev = os.makedev(m.devmajor, m.devminor)
            os.mknod(name, _DEVICES[m.type] | 0o600, dev, dir_fd=pfd)
        self.meta.at(pfd, name, m, chmod=True)
