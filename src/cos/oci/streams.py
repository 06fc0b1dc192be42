"""The byte streams of a layer: blob file, decompressor, diff_id hashing, tar headers.

A layer is read once, front to back: the blob file is counted and hashed as it is
read (the descriptor's size and digest), decompressed by what its magic says (gzip,
zstd or plain tar, as containerd decides, whatever the media type claims), the
decompressed bytes hashed (the config's diff_id) and handed to tarfile's stream
reader. Decompression and both digests run in a helper thread a few chunks ahead:
zlib, sha256 and write(2) release the GIL, so inflating the next chunks overlaps
writing the files of the last ones. Output is bounded per chunk, so a decompression
bomb cannot fill memory, and tar headers are parsed with limits (an extended header
is read whole into memory by tarfile).

zstd layers need the ``zstandard`` module (python3-zstandard, a dependency; Python
3.14's ``compression.zstd`` also does): without one they are refused with a clear
error. A zstd stream is read across frames, and skippable frames (zstd:chunked's
table of contents) yield nothing, so the decompressed stream is the tar alone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import os
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, Self

from cos.errors import ImageError
from cos.oci.contain import HOSTILE
from cos.oci.layout import LAYER_MEDIA_TYPES, LayerBlob

MAX_TRAILING = 256 << 20  # decompressed bytes after the end-of-archive marker
MAX_EXT_HEADER = 1 << 20  # a PAX or GNU long-name header larger than this is not a real one
MAX_EXT_CHAIN = 32  # extended headers before one member (real archives have two or three)
MAX_MEMBER_HEADERS = 2 * MAX_EXT_HEADER  # all header bytes of one member, sparse maps included
RECOPY = "the blob is damaged; re-copy or re-pull the image"
_IN = 1 << 20  # compressed bytes per read
_OUT = 4 << 20  # decompressed bytes per chunk at most (a bomb cannot fill memory)
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_EXT_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


class Source:
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


def _plain(src: Source) -> Iterator[bytes]:
    while data := src.read(_IN):
        yield data


def _gunzip(src: Source, label: str) -> Iterator[bytes]:
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
                raise ImageError(f"{label}: the gzip stream is truncated", hint=RECOPY)
    except zlib.error as exc:
        raise ImageError(f"{label}: corrupt gzip data ({exc})", hint=RECOPY) from exc


def _unzstd(src: Source, label: str) -> Iterator[bytes]:
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
        raise ImageError(f"{label}: corrupt zstd data ({exc})", hint=RECOPY) from exc


class Inflater:
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


class TarStream:
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


def decompressor(src: Source, media_type: str, label: str) -> Iterator[bytes]:
    """By magic first, as containerd does: '+gzip' layers holding plain tar exist."""
    head = src.peek(4)
    if head.startswith(_GZIP_MAGIC):
        return _gunzip(src, label)
    if head.startswith(_ZSTD_MAGIC):
        return _unzstd(src, label)
    if media_type.endswith("+zstd") and head:
        raise ImageError(f"{label}: media type says zstd but the data is not", hint=RECOPY)
    return _plain(src)


# --- tar headers ---------------------------------------------------------------------

_PROC_MEMBER: Callable[..., tarfile.TarInfo] | None = vars(tarfile.TarInfo).get("_proc_member")


# A zero block or a clean end of stream: the archive is over. Any other bad header is
# an error (tarfile would otherwise end the archive silently there, dropping the rest).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = tuple(
    vars(tarfile)[n] for n in ("EOFHeaderError", "EmptyHeaderError") if n in vars(tarfile)
)
_CHAIN = "_cos_ext_chain"  # on the TarFile: extended headers read for the current member
_MALFORMED = (ValueError, IndexError, KeyError, OverflowError, UnicodeError, EOFError)


class CappedTarInfo(tarfile.TarInfo):
    """Header parsing with limits: tarfile reads a whole extended header into memory,
    and some malformed headers make it raise plain ValueErrors."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        try:
            return super().frombuf(buf, encoding, errors)
        except _END_OF_ARCHIVE:
            raise
        except tarfile.HeaderError as exc:
            raise ImageError(f"corrupt tar header ({exc})", hint=HOSTILE) from exc

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        """tarfile reads the member an extended header belongs to by recursing, so a
        chain of them is bounded here rather than by the interpreter's stack; and
        everything read for one member's headers (extended headers, GNU sparse maps,
        which tarfile keeps in lists) shares one budget, so memory stays bounded."""
        if not isinstance(tf.fileobj, _HeaderBudget):
            stream = tf.fileobj
            tf.fileobj = _HeaderBudget(stream)
            try:
                return self._proc_member(tf)
            finally:
                tf.fileobj = stream
        if self.type not in _EXT_TYPES:
            return self._proc(tf)
        if self.size > MAX_EXT_HEADER:
            raise ImageError(
                f"tar extended header of {self.size} bytes (limit {MAX_EXT_HEADER})",
                hint=HOSTILE,
            )
        depth = vars(tf).get(_CHAIN, 0)
        if depth >= MAX_EXT_CHAIN:
            raise ImageError(
                f"more than {MAX_EXT_CHAIN} chained tar extended headers", hint=HOSTILE
            )
        vars(tf)[_CHAIN] = depth + 1
        try:
            return self._proc(tf)
        finally:
            vars(tf)[_CHAIN] = depth

    def _proc(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        assert _PROC_MEMBER is not None  # tarfile calls this hook only where it has it
        try:
            return _PROC_MEMBER(self, tf)
        except _MALFORMED as exc:
            raise ImageError(f"malformed tar header ({exc})", hint=HOSTILE) from exc


class _HeaderBudget:
    """tarfile's stream while it reads one member's headers: reads are counted."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._left = MAX_MEMBER_HEADERS

    def read(self, n: int) -> bytes:
        data: bytes = self._stream.read(n)
        self._left -= len(data)
        if self._left < 0:
            raise ImageError(
                f"tar headers of more than {MAX_MEMBER_HEADERS} bytes for one member"
                " (extended headers or a sparse map)",
                hint=HOSTILE,
            )
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


# --- a layer ---------------------------------------------------------------------------


@contextmanager
def layer_tar(layer: LayerBlob) -> Iterator[tarfile.TarFile]:
    """The layer's blob as a tar stream; checked against its descriptor when the block ends.

    Errors raised in the block (by tarfile or by whoever applies the entries) come out
    as ImageErrors that name the layer.
    """
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
                hint=RECOPY,
            )
        src = Source(f)
        inflater = Inflater(decompressor(src, layer.media_type, layer.label))
        stream = TarStream(iter(inflater))
        try:
            with tarfile.open(
                fileobj=stream,
                mode="r|",
                tarinfo=CappedTarInfo,
                encoding="utf-8",
                errors="surrogateescape",
            ) as tf:
                yield tf
            stream.drain(MAX_TRAILING)
        except tarfile.TarError as exc:
            raise ImageError(f"{layer.label} is not a valid tar archive: {exc}") from exc
        except RecursionError:
            raise ImageError(
                f"{layer.label}: too many chained tar extended headers", hint=HOSTILE
            ) from None
        except ImageError as exc:
            if exc.message.startswith(layer.label):
                raise
            raise ImageError(f"{layer.label}: {exc.message}", hint=exc.hint) from exc
        finally:
            inflater.close()
    _verify(layer, src, inflater)


def entries(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a stream-mode archive, without keeping every header in memory."""
    seen: list[tarfile.TarInfo] = vars(tf)["members"]
    while (m := tf.next()) is not None:
        seen.clear()
        yield m
        _skip_data(tf)  # whatever of m's data the caller did not read


def _skip_data(tf: tarfile.TarFile) -> None:
    """Read to where the next header starts, failing where the stream ends.

    tarfile's stream seek reads forward block by block for as many blocks as the last
    header's size says, and keeps going after the data ran out: a header claiming a
    member of 2**70 bytes would spin forever on a layer of a few hundred bytes.
    """
    stream = tf.fileobj
    assert stream is not None
    left = tf.offset - stream.tell()
    while left > 0:
        data = stream.read(min(left, _IN))
        if not data:
            raise ImageError(
                f"the archive ends {left} bytes short of where its last member's data ends",
                hint=RECOPY,
            )
        left -= len(data)


def _verify(layer: LayerBlob, src: Source, inflater: Inflater) -> None:
    if layer.size is not None and src.size != layer.size:
        raise ImageError(
            f"{layer.label}: read {src.size} bytes, the descriptor says {layer.size}",
            hint=RECOPY,
        )
    if layer.digest is not None and f"sha256:{src.hash.hexdigest()}" != layer.digest:
        raise ImageError(f"{layer.label}: blob does not match its digest", hint=RECOPY)
    if layer.diff_id is not None and f"sha256:{inflater.hash.hexdigest()}" != layer.diff_id:
        raise ImageError(
            f"{layer.label}: uncompressed content does not match the config's diff_id",
            hint="the image is inconsistent; rebuild or re-pull it",
        )
