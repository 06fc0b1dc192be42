"""Applying OCI image layers to a directory without trusting what the layers contain.

Why our own unpacker instead of `umoci raw unpack`: an image is untrusted input until
it is booted, and the property that matters most — nothing outside the target
directory changes, whatever the layers contain — is one we want to state in code and
test shape by shape (tests/support/malicious_layers.py holds the corpus, drawn from
the CVEs of docker, containerd, umoci, GNU tar and Python's tarfile). Doing it
in-process also lets us check the blob digest, its size and the uncompressed digest
(the config's diff_id) on the very bytes being applied, while they stream, and saves
an external process and its error-message scraping.

How containment is kept:

* Every path is walked component by component from a descriptor of the root, each
  step an ``openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)``. A symlink met on the way is
  resolved against the root as if chrooted (absolute targets restart at the root,
  ``..`` stops there, at most 40 hops) — the semantics of umoci's securejoin and of
  openat2(RESOLVE_IN_ROOT), so layers that write through in-image symlinks (such as
  ``lib -> usr/lib``) land where the image means. Nothing is cached between entries.
* The last component is never followed: existing entries are removed with
  unlinkat/rmdir on directory descriptors, files are created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, and owner, mode, xattrs and times are set on the
  new file's descriptor or with the no-follow ``*at`` calls.
* Entry names are normalized lexically; a name or hard-link target that would climb
  above the root with ``..``, names holding NUL, longer than PATH_MAX or with a
  component longer than NAME_MAX are refused. Hard links are made with
  ``linkat`` without AT_SYMLINK_FOLLOW, to a target resolved inside the root.
* The root stays 0700 while layers are applied (setuid binaries and device nodes
  are not reachable by other users of the host before the tree is complete) and gets
  its final owner and mode last. On any failure the partial tree is removed.
* Space: a layer may not write more than the free space (and inodes) of the target's
  filesystem, extended headers are capped, and entries are counted.

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

Practicalities: the decompressor and both digests run in a helper thread a few chunks
ahead (zlib, sha256 and write(2) release the GIL), xattrs of symlinks and device nodes
are set through ``/proc/self/fd/<parent>/<name>`` without following (Linux has no
lsetxattrat), and zstd layers need the ``zstandard`` module (or Python 3.14's
``compression.zstd``): without one they are refused with a clear error.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import importlib
import os
import queue
import stat
import tarfile
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, Self

from cos.errors import ImageError
from cos.log import log
from cos.oci.layout import LAYER_MEDIA_TYPES, LayerBlob, OciLayout

MAX_NAME = 4096  # PATH_MAX
MAX_COMPONENT = 255  # NAME_MAX
MAX_DEPTH = 256  # directories below the root; keeps descriptors and recursion bounded
MAX_SYMLINK_HOPS = 40  # the kernel's MAXSYMLINKS
MAX_EXT_HEADER = 1 << 20  # a PAX or GNU long-name header larger than this is not a real one
MAX_ENTRIES = 10_000_000  # per unpack, on top of the inode check
MAX_TRAILING = 256 << 20  # decompressed bytes after the end-of-archive marker
_IN = 1 << 20  # compressed bytes per read
_OUT = 4 << 20  # decompressed bytes per chunk at most (a bomb cannot fill memory)
_COPY = 1 << 20
_BLOCK = 4096

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_WH = ".wh."
_OPAQUE = ".wh..wh..opq"
_IGNORED_XATTRS = frozenset({"security.selinux"})
_OVERLAY = "trusted.overlay."

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_REGULAR = frozenset(tarfile.REGULAR_TYPES)
_DEVICES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}
_EXT_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


def unpack_layers(layers: Sequence[tuple[Path, str]], dest: Path) -> None:
    """Apply layer blobs (base first, as (blob file, media type)) to a new directory dest."""
    n = len(layers)
    _unpack(
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
    _unpack(OciLayout(layout).image_layers(manifest_digest), Path(dest))


# --- decompression ------------------------------------------------------------------------


class _Source:
    """The blob file, read in large chunks, counted and hashed as it goes."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0
        self._peeked = b""

    def peek(self, n: int) -> bytes:
        if len(self._peeked) < n:
            self._peeked += self._raw(n - len(self._peeked))
        return self._peeked[:n]

    def _raw(self, n: int) -> bytes:
        data = self._f.read(n)
        self.size += len(data)
        self.hash.update(data)
        return data

    def read(self, n: int = _IN) -> bytes:
        if self._peeked:
            data, self._peeked = self._peeked[:n], self._peeked[n:]
            return data
        return self._raw(n)


def _plain(src: _Source) -> Iterator[bytes]:
    while data := src.read(_IN):
        yield data


def _gunzip(src: _Source, label: str) -> Iterator[bytes]:
    """Multi-member gzip; zero padding after a member is allowed (both occur in the wild)."""
    d: Any = zlib.decompressobj(31)
    tail = b""
    try:
        while True:
            data = tail or src.read(_IN)
            tail = b""
            if not data:
                break
            if d is None:
                if data[0] == 0:  # padding: must be zeros up to the end
                    while data:
                        if data.count(0) != len(data):
                            raise ImageError(f"{label}: data after the gzip stream")
                        data = src.read(_IN)
                    return
                d = zlib.decompressobj(31)
            while data:
                out = d.decompress(data, _OUT)
                if out:
                    yield out
                if d.eof:
                    tail, d = d.unused_data, None
                    break
                data = d.unconsumed_tail
        if d is not None:
            out = d.flush()
            if out:
                yield out
            if not d.eof:
                raise ImageError(f"{label}: the gzip stream is truncated", hint=_RECOPY)
    except zlib.error as exc:
        raise ImageError(f"{label}: corrupt gzip data ({exc})", hint=_RECOPY) from exc


def _unzstd(src: _Source, label: str) -> Iterator[bytes]:
    try:
        zstandard: Any = importlib.import_module("zstandard")
    except ImportError:
        zstandard = None
    try:
        if zstandard is not None:
            reader = zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True)
        else:
            reader = importlib.import_module("compression.zstd").ZstdFile(src)
    except ImportError:
        raise ImageError(
            f"{label} is zstd-compressed and no zstd decompressor is available",
            hint="install the Python zstandard module (python3-zstandard), or use gzip layers",
        ) from None
    try:
        while out := reader.read(_OUT):
            yield out
    except ImageError:
        raise
    except Exception as exc:  # the decompressor's own error type
        raise ImageError(f"{label}: corrupt zstd data ({exc})", hint=_RECOPY) from exc


_RECOPY = "the blob is damaged; re-copy or re-pull the image"


class _Inflater:
    """Runs the decompressor (and both digests) in a thread, a few chunks ahead.

    zlib, sha256 and write(2) all release the GIL, so inflating and hashing the next
    chunks overlaps writing the files of the last ones.
    """

    def __init__(self, chunks: Iterator[bytes], depth: int = 4) -> None:
        self.hash = hashlib.sha256()  # of the decompressed stream: the diff_id
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(chunks,), name="cos-unpack-inflate", daemon=True
        )
        self._thread.start()

    def _run(self, chunks: Iterator[bytes]) -> None:
        item: bytes | BaseException | None = None
        try:
            for chunk in chunks:
                self.hash.update(chunk)
                self._queue.put(chunk)
                if self._stop.is_set():
                    return
        except BaseException as exc:  # handed to the reading thread, which raises it
            item = exc
        self._queue.put(item)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the thread (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()


class _TarStream:
    """What tarfile reads: the decompressed layer, served from the inflater's chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self.size = 0

    def _next(self) -> bytes | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self.size += len(chunk)
        return chunk

    def read(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos + n <= len(buf):
            self._pos = pos + n
            return buf[pos : pos + n]
        parts = [buf[pos:]]
        have = len(parts[0])
        self._buf, self._pos = b"", 0
        while have < n:
            chunk = self._next()
            if chunk is None:
                break
            take = n - have
            if len(chunk) > take:
                parts.append(chunk[:take])
                self._buf, self._pos = chunk, take
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def drain(self, limit: int) -> None:
        """Read to the end so the digest covers the padding some writers add."""
        extra = len(self._buf) - self._pos
        self._buf, self._pos = b"", 0
        while (chunk := self._next()) is not None:
            extra += len(chunk)
            if extra > limit:
                raise ImageError(f"more than {limit} bytes after the end of the tar archive")

    # tarfile's stream reader only reads, but its file protocol names these.
    def write(self, b: bytes) -> int:
        raise OSError(errno.EBADF, "read-only")

    def tell(self) -> int:
        return self.size - (len(self._buf) - self._pos)

    def seek(self, pos: int) -> int:
        raise OSError(errno.ESPIPE, "not seekable")

    def close(self) -> None:
        pass


def _decompressor(src: _Source, media_type: str, label: str) -> Iterator[bytes]:
    """By magic first, as containerd does: '+gzip' layers holding plain tar exist."""
    head = src.peek(4)
    if head.startswith(_GZIP_MAGIC):
        return _gunzip(src, label)
    if head.startswith(_ZSTD_MAGIC):
        return _unzstd(src, label)
    if media_type.endswith("+zstd") and head:
        raise ImageError(f"{label}: media type says zstd but the data is not", hint=_RECOPY)
    return _plain(src)


# --- tar headers ------------------------------------------------------------------------

_PROC_MEMBER: Callable[..., tarfile.TarInfo] | None = vars(tarfile.TarInfo).get("_proc_member")


# A zero block or a clean end of stream: the archive is over. Any other bad header is
# an error (tarfile would otherwise end the archive silently there, dropping the rest).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = tuple(
    vars(tarfile)[n] for n in ("EOFHeaderError", "EmptyHeaderError") if n in vars(tarfile)
)
_MALFORMED = (ValueError, IndexError, KeyError, OverflowError, UnicodeError, EOFError)


class _CappedTarInfo(tarfile.TarInfo):
    """Header parsing with limits: tarfile reads a whole extended header into memory,
    and some malformed headers make it raise plain ValueErrors."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as exc:
            raise ImageError(f"corrupt tar header ({exc})", hint=_HOSTILE) from exc

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXT_TYPES and self.size > MAX_EXT_HEADER:
            raise ImageError(
                f"tar extended header of {self.size} bytes (limit {MAX_EXT_HEADER})",
                hint=_HOSTILE,
            )
        assert _PROC_MEMBER is not None  # tarfile calls this hook only where it has it
        try:
            return _PROC_MEMBER(self, tf)
        except _MALFORMED as exc:
            raise ImageError(f"malformed tar header ({exc})", hint=_HOSTILE) from exc


def _show(name: str) -> str:
    """A name as one printable line (names may hold newlines or undecodable bytes)."""
    text = repr(name)
    return text if len(text) <= 160 else text[:157] + "..."


def _clean(name: str, what: str) -> list[str]:
    """Components of an in-image path, relative to the root; refuses escapes and junk."""
    if "\0" in name:
        raise ImageError(f"{what} {_show(name)} contains a NUL byte", hint=_HOSTILE)
    if len(os.fsencode(name)) > MAX_NAME:
        raise ImageError(f"{what} is longer than {MAX_NAME} bytes: {_show(name)}", hint=_HOSTILE)
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ImageError(f"{what} {_show(name)} climbs out of the root", hint=_HOSTILE)
            parts.pop()
            continue
        if len(os.fsencode(part)) > MAX_COMPONENT:
            raise ImageError(
                f"{what} {_show(name)} has a component longer than {MAX_COMPONENT} bytes",
                hint=_HOSTILE,
            )
        parts.append(part)
    return parts


_HOSTILE = "the layer is malformed or hostile; rebuild the image from a trusted source"


def _ns(value: str) -> int:
    return int(Decimal(value).scaleb(9).to_integral_value())


def _times(m: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns; PAX times keep their sub-second part."""
    pax = m.pax_headers
    try:
        mtime = _ns(pax["mtime"]) if "mtime" in pax else int(m.mtime) * 1_000_000_000
        atime = _ns(pax["atime"]) if "atime" in pax else mtime
    except (InvalidOperation, ValueError, OverflowError):
        mtime = atime = int(m.mtime) * 1_000_000_000
    return atime, mtime


def _xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            try:
                name = os.fsdecode(urllib.parse.unquote_to_bytes(key[17:]))
                raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (ValueError, binascii.Error):
                continue
            out.setdefault(name, raw)
        elif key.startswith("SCHILY.xattr."):
            out[key[13:]] = value.encode("utf-8", "surrogateescape")
    result: dict[str, bytes] = {}
    for name, raw in out.items():
        if name in _IGNORED_XATTRS:
            continue
        if name.startswith(_OVERLAY):
            name = _OVERLAY + "overlay." + name[len(_OVERLAY) :]
        result[name] = raw
    return result


def _join(key: str, name: str) -> str:
    return f"{key}/{name}" if key else name


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


def _unpack(layers: Sequence[LayerBlob], dest: Path) -> None:
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
        root_fd = os.open(dest, _DIR_FLAGS)
        try:
            _Unpacker(root_fd).run(layers)
        finally:
            os.close(root_fd)
        ok = True
    except OSError as exc:
        raise ImageError(f"unpacking into {dest} failed: {exc}") from exc
    finally:
        if not ok:
            if created:
                _remove_dest(dest)
            else:
                _empty_dest(dest)


def _empty_dest(dest: Path) -> None:
    """Remove what a failed unpack left in a mountpoint, keeping the mountpoint."""
    try:
        fd = os.open(dest, _DIR_FLAGS)
    except OSError:
        return
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it if e.name != "lost+found"]
        for name in names:
            _remove(fd, name)
    except OSError as exc:
        log.warning("could not empty %s: %s", dest, exc)
    finally:
        os.close(fd)


def _remove_dest(dest: Path) -> None:
    """Remove a partial tree (it may hold setuid files, devices and hostile symlinks)."""
    try:
        parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _remove(parent, dest.name)
    except OSError as exc:
        log.warning("could not remove the partial tree %s: %s", dest, exc)
    finally:
        os.close(parent)


def _remove(dfd: int, name: str) -> None:
    """Remove name in dfd and everything below it, following no symlink."""
    try:
        os.unlink(name, dir_fd=dfd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: Linux's answer to unlink(directory) on some filesystems
        if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise
    fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    try:
        with os.scandir(fd) as it:
            children = [e.name for e in it]
        for child in children:
            _remove(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


class _Unpacker:
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
        self.warned_xattr = False

    def run(self, layers: Sequence[LayerBlob]) -> None:
        for layer in layers:
            self.label = layer.label
            self.upper = set()
            self.dir_times = {}
            self._layer(layer)
            self._fix_dir_times()
        os.fchown(self.root, *self.root_owner)
        os.fchmod(self.root, self.root_mode)

    # -- one layer

    def _layer(self, layer: LayerBlob) -> None:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise ImageError(
                f"{layer.label}: unsupported media type {layer.media_type!r}",
                hint="layers must be tar, tar+gzip or tar+zstd",
            )
        try:
            f = open(layer.path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ImageError(
                f"{layer.label}: cannot read {layer.path}: {exc.strerror}",
                hint="re-copy the image",
            ) from exc
        with f:
            if layer.size is not None and os.fstat(f.fileno()).st_size != layer.size:
                raise ImageError(
                    f"{layer.label}: blob is {os.fstat(f.fileno()).st_size} bytes, "
                    f"its descriptor says {layer.size}",
                    hint=_RECOPY,
                )
            src = _Source(f)
            inflater = _Inflater(_decompressor(src, layer.media_type, layer.label))
            stream = _TarStream(iter(inflater))
            try:
                with tarfile.open(
                    fileobj=stream,
                    mode="r|",
                    tarinfo=_CappedTarInfo,
                    encoding="utf-8",
                    errors="surrogateescape",
                ) as tf:
                    seen: list[tarfile.TarInfo] = vars(tf)["members"]
                    while (m := tf.next()) is not None:
                        seen.clear()  # stream mode would keep every header in memory
                        self._entry(tf, m)
                stream.drain(MAX_TRAILING)
            except tarfile.TarError as exc:
                raise ImageError(f"{layer.label} is not a valid tar archive: {exc}") from exc
            except RecursionError:
                raise ImageError(
                    f"{layer.label}: too many chained tar extended headers", hint=_HOSTILE
                ) from None
            except ImageError as exc:
                if exc.message.startswith(self.label):
                    raise
                raise ImageError(f"{self.label}: {exc.message}", hint=exc.hint) from exc
            finally:
                inflater.close()
        self._verify(layer, src, inflater)

    def _verify(self, layer: LayerBlob, src: _Source, inflater: _Inflater) -> None:
        if layer.size is not None and src.size != layer.size:
            raise ImageError(
                f"{layer.label}: read {src.size} bytes, the descriptor says {layer.size}",
                hint=_RECOPY,
            )
        if layer.digest is not None and f"sha256:{src.hash.hexdigest()}" != layer.digest:
            raise ImageError(f"{layer.label}: blob does not match its digest", hint=_RECOPY)
        if layer.diff_id is not None and f"sha256:{inflater.hash.hexdigest()}" != layer.diff_id:
            raise ImageError(
                f"{layer.label}: uncompressed content does not match the config's diff_id",
                hint="the image is inconsistent; rebuild or re-pull it",
            )

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise ImageError(f"{self.label}: more than {MAX_ENTRIES} entries", hint=_HOSTILE)
        parts = _clean(m.name, "entry")
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
                f"{self.label}: cannot unpack {_show(m.name)}: {detail}",
                hint="the target filesystem must be writable, have room, and support "
                "ownership, device nodes and xattrs (unpack as root)",
            ) from exc

    # -- path resolution

    def _walk(self, parts: Sequence[str], create: bool) -> tuple[int, str] | None:
        """O_PATH descriptor and in-root path of directory parts, symlinks resolved in root.

        Missing directories are made (create) or end the walk with None; a component
        that is neither a directory nor a symlink is refused (create) or None.
        """
        todo = list(reversed(parts))
        names: list[str] = []
        cur = self.root
        hops = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if names:
                        names.pop()
                        old, cur = cur, self.root
                        cur = self._reopen(old, names)
                    continue
                try:
                    fd = os.open(name, _PATH_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        self._release(cur)
                        return None
                    self._touch("/".join(names), cur)
                    self._spend(_BLOCK)
                    os.mkdir(name, 0o755, dir_fd=cur)
                    fd = os.open(name, _DIR_FLAGS, dir_fd=cur)
                    os.fchmod(fd, 0o755)  # whatever the umask
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        if not create:
                            self._release(cur)
                            return None
                        where = "/".join([*names, name])
                        raise ImageError(
                            f"{self.label}: {_show(where)} is not a directory but a layer "
                            "puts entries below it",
                            hint=_HOSTILE,
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise ImageError(
                            f"{self.label}: too many levels of symbolic links at "
                            f"{_show('/'.join([*names, name]))}",
                            hint=_HOSTILE,
                        ) from None
                    target = os.readlink(name, dir_fd=cur)
                    if not target:  # the kernel resolves these to ENOENT
                        if not create:
                            self._release(cur)
                            return None
                        raise ImageError(
                            f"{self.label}: empty symlink {_show('/'.join([*names, name]))} "
                            "on the way to an entry",
                            hint=_HOSTILE,
                        ) from None
                    if target.startswith("/"):
                        names = []
                        self._release(cur)
                        cur = self.root
                    todo.extend(reversed(target.split("/")))
                    continue
                if cur != self.root:
                    os.close(cur)
                cur = fd
                names.append(name)
                if len(names) > MAX_DEPTH:
                    raise ImageError(
                        f"{self.label}: directories nested deeper than {MAX_DEPTH}",
                        hint=_HOSTILE,
                    )
        except BaseException:
            self._release(cur)
            raise
        if cur == self.root:
            cur = os.dup(self.root)
        return cur, "/".join(names)

    def _release(self, fd: int) -> None:
        if fd != self.root:
            os.close(fd)

    def _reopen(self, cur: int, names: Sequence[str]) -> int:
        """After '..': walk down again from the root (no symlinks: these were directories)."""
        self._release(cur)
        fd = self.root
        try:
            for name in names:
                nfd = os.open(name, _PATH_FLAGS, dir_fd=fd)
                self._release(fd)
                fd = nfd
        except BaseException:
            self._release(fd)
            raise
        return fd

    def _exact(self, key: str) -> tuple[int, str] | None:
        """Parent descriptor and name of an already resolved path, or None if it moved."""
        parts = key.split("/")
        fd = self.root
        try:
            for name in parts[:-1]:
                nfd = os.open(name, _PATH_FLAGS, dir_fd=fd)
                self._release(fd)
                fd = nfd
        except OSError:
            self._release(fd)
            return None
        return (fd if fd != self.root else os.dup(fd)), parts[-1]

    # -- bookkeeping

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
            got = self._exact(key)
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

    # -- metadata

    def _ids(self, m: tarfile.TarInfo) -> tuple[int, int]:
        if not (0 <= m.uid < 0xFFFFFFFF and 0 <= m.gid < 0xFFFFFFFF):
            raise ImageError(
                f"{self.label}: {_show(m.name)} has an invalid owner {m.uid}:{m.gid}",
                hint=_HOSTILE,
            )
        return m.uid, m.gid

    def _set_xattrs(self, target: int | str, xattrs: dict[str, bytes], clear: bool) -> None:
        """Set on a descriptor, or on a path under /proc/self/fd without following it."""
        follow = isinstance(target, int)
        if clear:
            for name in os.listxattr(target, follow_symlinks=follow):
                if name not in _IGNORED_XATTRS and name not in xattrs:
                    os.removexattr(target, name, follow_symlinks=follow)
        for name, value in xattrs.items():
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if not self.warned_xattr:
                    log.warning("the target filesystem does not support xattr %s: not set", name)
                    self.warned_xattr = True

    def _fd_meta(self, fd: int, m: tarfile.TarInfo, clear: bool = False) -> None:
        """Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities)."""
        os.fchown(fd, *self._ids(m))
        os.fchmod(fd, m.mode & 0o7777)
        xattrs = _xattrs(m)
        if xattrs or clear:
            self._set_xattrs(fd, xattrs, clear)

    def _at_meta(self, pfd: int, name: str, m: tarfile.TarInfo, chmod: bool) -> None:
        """The same for symlinks and special files, which cannot be opened for writing."""
        os.chown(name, *self._ids(m), dir_fd=pfd, follow_symlinks=False)
        if chmod:
            os.chmod(name, m.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        xattrs = _xattrs(m)
        if xattrs:
            self._set_xattrs(f"/proc/self/fd/{pfd}/{name}", xattrs, clear=False)
        os.utime(name, dir_fd=pfd, follow_symlinks=False, ns=_times(m))

    # -- entries

    def _root_entry(self, m: tarfile.TarInfo) -> None:
        if m.type != tarfile.DIRTYPE:
            raise ImageError(
                f"{self.label}: the root entry {_show(m.name)} is not a directory",
                hint=_HOSTILE,
            )
        # Owner and mode wait for the end: the tree stays private while it is built.
        self.root_owner = self._ids(m)
        self.root_mode = m.mode & 0o7777
        self._set_xattrs(self.root, _xattrs(m), clear=True)
        self.dir_times[""] = _times(m)
        self._made("")

    def _whiteout(self, parts: list[str], base: str) -> None:
        opaque = base == _OPAQUE
        if not opaque and base.startswith(_WH + _WH):
            return  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.orph): not part of the image
        target = base[len(_WH) :]
        if not opaque and target in ("", ".", ".."):
            raise ImageError(
                f"{self.label}: invalid whiteout {_show('/'.join(parts))}", hint=_HOSTILE
            )
        got = self._walk(parts[:-1], create=False)
        if got is None:
            return
        pfd, pkey = got
        try:
            self._touch(pkey, pfd)
            if opaque:
                dfd = os.open(".", _DIR_FLAGS, dir_fd=pfd)
                try:
                    self._clear_lower(dfd, pkey)
                finally:
                    os.close(dfd)
            else:
                self._remove_lower(pfd, target, _join(pkey, target))
        finally:
            os.close(pfd)

    def _remove_lower(self, pfd: int, name: str, key: str) -> None:
        """Remove what lower layers put at key, keeping what this layer made."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if key not in self.upper:
            _remove(pfd, name)
            return
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._clear_lower(fd, key)
            finally:
                os.close(fd)

    def _clear_lower(self, fd: int, key: str) -> None:
        with os.scandir(fd) as it:
            children = [e.name for e in it]
        for child in children:
            self._remove_lower(fd, child, _join(key, child))

    def _create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str]) -> None:
        kind = m.type
        link: tuple[int, str] | None = None
        if kind == tarfile.LNKTYPE:
            link = self._link_source(m)
        try:
            got = self._walk(parts[:-1], create=True)
            assert got is not None
            pfd, pkey = got
            try:
                name = parts[-1]
                key = _join(pkey, name)
                self._touch(pkey, pfd)
                try:
                    old: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    old = None
                if kind == tarfile.DIRTYPE:
                    self._dir(pfd, name, key, m, old)
                else:
                    if old is not None:
                        _remove(pfd, name)
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
                            f"{self.label}: {_show(m.name)} has unsupported tar type {kind!r}",
                            hint=_HOSTILE,
                        )
                self._made(key)
            finally:
                os.close(pfd)
        finally:
            if link is not None:
                os.close(link[0])

    def _link_source(self, m: tarfile.TarInfo) -> tuple[int, str]:
        """Where a hard link points: resolved inside the root, its last component unfollowed."""
        lparts = _clean(m.linkname, f"hard link {_show(m.name)} target")
        if not lparts:
            raise ImageError(
                f"{self.label}: hard link {_show(m.name)} points at the root", hint=_HOSTILE
            )
        got = self._walk(lparts[:-1], create=False)
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
            f"{self.label}: hard link {_show(m.name)} points at {_show(m.linkname)}, "
            "which is not a file the layers made",
            hint=_HOSTILE,
        )

    def _dir(
        self, pfd: int, name: str, key: str, m: tarfile.TarInfo, old: os.stat_result | None
    ) -> None:
        existing = old is not None and stat.S_ISDIR(old.st_mode)
        if not existing:
            if old is not None:
                _remove(pfd, name)
            self._spend(_BLOCK)
            os.mkdir(name, 0o700, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            self._fd_meta(fd, m, clear=existing)
        finally:
            os.close(fd)
        self.dir_times[key] = _times(m)

    def _file(self, tf: tarfile.TarFile, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        size = m.size
        if size < 0:
            raise ImageError(f"{self.label}: {_show(m.name)} has a negative size", hint=_HOSTILE)
        self._spend(-(-size // _BLOCK) * _BLOCK)
        fd = os.open(name, _NEW_FILE, 0o600, dir_fd=pfd)
        try:
            if size:
                self._copy(tf, m, fd)
            self._fd_meta(fd, m)
            os.utime(fd, ns=_times(m))
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
                raise ImageError(f"{self.label}: archive ends inside {_show(m.name)}")
            left -= len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[write(fd, view) :]

    def _symlink(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        if "\0" in m.linkname:
            raise ImageError(
                f"{self.label}: symlink {_show(m.name)} target contains a NUL byte", hint=_HOSTILE
            )
        self._spend(0)
        os.symlink(m.linkname, name, dir_fd=pfd)
        self._at_meta(pfd, name, m, chmod=False)

    def _special(self, pfd: int, name: str, m: tarfile.TarInfo) -> None:
        self._spend(0)
        if m.type == tarfile.FIFOTYPE:
            os.mkfifo(name, 0o600, dir_fd=pfd)
        else:
            dev = os.makedev(m.devmajor, m.devminor)
            os.mknod(name, _DEVICES[m.type] | 0o600, dev, dir_fd=pfd)
        self._at_meta(pfd, name, m, chmod=True)
