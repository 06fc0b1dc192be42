"""Cloud disk formats made from a raw disk: Azure's fixed VHD and GCE's disk.raw tarball.

Both are the raw bytes plus a wrapper, so they are written here rather than by a
converter: a fixed VHD is the raw disk followed by a 512-byte footer (Azure wants
the virtual size aligned to 1 MiB), and a GCE image is a gzip'd GNU tar holding one
member named `disk.raw` whose size is a whole number of GiB.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import uuid
from enum import StrEnum
from pathlib import Path

from cos import run as runner


class DiskType(StrEnum):
    """What build-disk writes: a raw disk or one of the formats wrapped around it."""

    RAW = "raw"
    QCOW2 = "qcow2"
    VHD = "vhd"
    GCE = "gce"


MIB = 1024 * 1024
GIB = 1024 * MIB
VHD_FOOTER = 512
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z


def _chs(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track, as the VHD specification computes them."""
    sectors = min(size // 512, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return cth // heads, heads, spt


def vhd_checksum(footer: bytes) -> int:
    """One's complement of the byte sum, the checksum field counted as zero."""
    data = footer[:64] + b"\0\0\0\0" + footer[68:]
    return ~sum(data) & 0xFFFFFFFF


def vhd_footer(size: int, disk_id: bytes | None = None, now: float | None = None) -> bytes:
    cyl, heads, spt = _chs(size)
    fields = struct.pack(
        ">8sIIQI4sI4sQQHBBII16sB",
        b"conectix",
        0x00000002,  # features: reserved bit always set
        0x00010000,  # format version 1.0
        0xFFFFFFFFFFFFFFFF,  # data offset: none for a fixed disk
        int((now if now is not None else time.time()) - _VHD_EPOCH) & 0xFFFFFFFF,
        b"cos ",
        0x00010000,
        b"Wi2k",
        size,  # original size
        size,  # current size
        cyl,
        heads,
        spt,
        2,  # disk type: fixed
        0,  # checksum, filled below
        disk_id or uuid.uuid4().bytes,
        0,  # saved state
    )
    footer = fields.ljust(VHD_FOOTER, b"\0")
    checksum = vhd_checksum(footer)
    return footer[:64] + struct.pack(">I", checksum) + footer[68:]


def to_vhd(raw: Path) -> None:
    """Turn raw into a fixed VHD in place (footer appended, size aligned to 1 MiB)."""
    size = raw.stat().st_size
    if size % MIB:
        size += MIB - size % MIB
        os.truncate(raw, size)
    with open(raw, "ab") as f:
        f.write(vhd_footer(size))
        f.flush()
        os.fsync(f.fileno())


def to_gce(raw: Path, out: Path) -> None:
    """Pack raw as `disk.raw` (size rounded up to GiB) into out, a sparse GNU tar.gz."""
    size = raw.stat().st_size
    if size % GIB:
        os.truncate(raw, size + GIB - size % GIB)
    scratch = Path(tempfile.mkdtemp(prefix=".cos-gce-", dir=raw.parent))
    disk = scratch / "disk.raw"
    os.rename(raw, disk)
    try:
        runner.run(
            ["tar", "--format=oldgnu", "-S", "-czf", str(out), "-C", str(scratch), "disk.raw"]
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
