"""Hostile tar layers for the robustness suite: hand-made headers and damaged streams.

A layer is etc/ and a file, then one to three hostile pieces (a header whose size,
mode, owner or type does not parse or lies, PAX records with odd keys, values and
lengths, GNU long names, chains of extended headers), then etc/os-release, so that
every reader has to get past the pieces; the result may be cut short or overwritten
at random.
"""

from __future__ import annotations

import io
import tarfile

from hypothesis import strategies as st

OS_RELEASE = b'PRETTY_NAME="Fuzz OS"\n'


def _entries(*files: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    for name, data in files:
        info = tarfile.TarInfo(name)
        info.mtime, info.mode = 1_600_000_000, 0o644
        if name.endswith("/"):
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()  # no end-of-archive blocks: more may follow


def assemble(pieces: list[bytes], end: bool = True) -> bytes:
    """etc/ and a file, the hostile pieces, then etc/os-release (so readers reach them)."""
    head = _entries(("etc/", b""), ("etc/hostname", b"fuzz\n"))
    tail = _entries(("etc/os-release", OS_RELEASE))
    return head + b"".join(pieces) + tail + (b"\0" * 1024 if end else b"")


def clean_layer() -> bytes:
    return assemble([], end=True)


_FIELDS = {  # name: (offset, length) in a ustar header block
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "chksum": (148, 8), "type": (156, 1), "linkname": (157, 100),
    "magic": (257, 8), "uname": (265, 32), "gname": (297, 32), "devmajor": (329, 8),
    "devminor": (337, 8), "prefix": (345, 155),
}  # fmt: skip


def header(bad_checksum: bool = False, **fields: bytes) -> bytes:
    """A 512-byte ustar header block of the given raw field bytes."""
    values = {"mode": b"0000644\0", "uid": b"0000000\0", "gid": b"0000000\0", "type": b"0"}
    values |= {"size": b"00000000000\0", "mtime": b"14000000000\0", "magic": b"ustar\x0000"}
    values |= fields
    block = bytearray(512)
    for name, data in values.items():
        off, n = _FIELDS[name]
        block[off : off + n] = data[:n].ljust(n, b"\0")
    block[148:156] = b" " * 8
    total = sum(block) + (1 if bad_checksum else 0)
    block[148:156] = b"%06o\0 " % (total % 0o1000000)
    return bytes(block)


def octal(n: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, n)


SIZES = [
    octal(0), octal(1), octal(511), octal(4096), octal(2**33 - 1),
    b"\x80" + (2**70).to_bytes(11, "big"), b"\xff" * 12, b"\xff" + (2**40).to_bytes(11, "big"),
    b"zzzzzzzzzzz\0", b"           \0", b"-1\0", b"", b"0x10\0", b"7" * 12, b"1e9\0",
]  # fmt: skip
NAMES = [
    b"f", b"a" * 100, b"../../x", b"/abs/f", "é/ü".encode(), b"\xff\xfe", b"", b"./", b"x/" * 50,
    b"etc/os-release", b".wh..wh..opq", b".wh.etc", b"\0hidden",
]  # fmt: skip
TYPES = [b"0", b"5", b"2", b"1", b"3", b"4", b"6", b"7", b"L", b"K", b"x", b"g", b"S", b"V", b"M",
         b"\0", b"Z"]  # fmt: skip
PAX_KEYS = [
    "size", "path", "linkpath", "uid", "gid", "mtime", "atime", "ctime", "uname", "gname",
    "SCHILY.xattr.user.x", "SCHILY.xattr.trusted.overlay.opaque",
    "SCHILY.xattr.security.capability",
    "LIBARCHIVE.xattr.user.%ff", "LIBARCHIVE.xattr.", "GNU.sparse.map", "GNU.sparse.major",
    "GNU.sparse.minor", "GNU.sparse.size", "GNU.sparse.realsize", "GNU.sparse.name",
    "GNU.sparse.numblocks", "GNU.sparse.offset", "hdrcharset", "comment", "", "=", "ü", "a b",
]  # fmt: skip
PAX_VALUES = [
    "", "-1", "0", "1", "9" * 5000, "1e999", "nan", "inf", "-inf", "0x10", "1.5", "1.", ".5",
    "\x00", "ü", "BINARY", "../../x", "/", "x" * 300, "0,1,2", "1,2,3,4,5", "18446744073709551616",
]  # fmt: skip


@st.composite
def pax_records(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(PAX_KEYS)).encode()
        value = draw(st.sampled_from(PAX_VALUES) | st.text(max_size=10)).encode("utf-8", "replace")
        if draw(st.integers(0, 9)) == 0:
            value = draw(st.binary(max_size=8))
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + len(str(len(body)))
        n += len(str(n)) - len(str(len(body)))
        length = draw(
            st.sampled_from([str(n).encode()] * 4 + [b"0", b"-5", b"x", b"99999999999999999999"])
            | st.integers(0, 2 * n).map(lambda i: str(i).encode())
        )
        out += length + body
    return out


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


@st.composite
def pieces(draw: st.DrawFn) -> bytes:
    """One hostile piece of a tar stream (headers and what follows them)."""
    kind = draw(st.sampled_from(["header", "pax", "longname", "chain", "global"]))
    data = draw(st.binary(max_size=1100))
    member = header(name=b"m", size=octal(len(data))) + pad(data)
    if kind == "header":
        block = header(
            draw(st.booleans()),
            name=draw(st.sampled_from(NAMES)),
            size=draw(st.sampled_from(SIZES)),
            type=draw(st.sampled_from(TYPES)),
            linkname=draw(st.sampled_from(NAMES)),
            mode=draw(st.sampled_from([b"0000644\0", b"7777777\0", b"zz\0", b"\xff" * 8])),
            uid=draw(st.sampled_from([b"0000000\0", b"7777777\0", b"\xff" * 8, b"-1\0"])),
            mtime=draw(st.sampled_from([b"14000000000\0", b"\xff" * 12, b"\x80" + b"\xff" * 11])),
            magic=draw(st.sampled_from([b"ustar\x0000", b"ustar  \0", b"\0" * 8])),
        )
        return block + (pad(data) if draw(st.booleans()) else data)
    if kind in ("pax", "global"):
        records = draw(pax_records())
        size = octal(len(records)) if draw(st.booleans()) else draw(st.sampled_from(SIZES))
        ext = header(name=b"././@PaxHeader", type=b"x" if kind == "pax" else b"g", size=size)
        return ext + pad(records) + member
    if kind == "longname":
        name = draw(st.sampled_from([b"n" * 5000, b"a/" * 3000, b"x" * 300, b"\0", b"..", b""]))
        typ = draw(st.sampled_from([b"L", b"K"]))
        size = octal(len(name)) if draw(st.booleans()) else draw(st.sampled_from(SIZES))
        return header(name=b"././@LongLink", type=typ, size=size) + pad(name) + member
    count = draw(st.sampled_from([2, 100, 3000]))
    typ = draw(st.sampled_from([b"x", b"L", b"g"]))
    return header(name=b"././@PaxHeader", type=typ) * count + member


@st.composite
def layers(draw: st.DrawFn) -> bytes:
    """A layer tar with hostile pieces, then maybe cut short or overwritten."""
    tar = assemble(draw(st.lists(pieces(), min_size=1, max_size=3)), end=draw(st.booleans()))
    cut = draw(st.one_of(st.none(), st.integers(0, len(tar))))
    if cut is not None and draw(st.integers(0, 3)) == 0:
        tar = tar[:cut]
    edits = draw(st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=4))
    data = bytearray(tar)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    return bytes(data)
