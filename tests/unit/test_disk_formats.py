"""Cloud formats checked the way the clouds check them: VHD footer fields, GCE tarball rules."""

from __future__ import annotations

import gzip
import struct
import tarfile
from pathlib import Path

import pytest

from cos.disk import formats

MIB = 1024 * 1024


def _raw(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(b"\xebcos-mbr")
        f.truncate(size)
        f.seek(size - 6)
        f.write(b"theend")
    return path


def test_fixed_vhd_footer_fields(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "d.vhd", 64 * MIB + 4096)  # not 1 MiB aligned: rounded up
    formats.to_vhd(raw)
    data = raw.read_bytes()
    assert len(data) == 65 * MIB + 512
    footer = data[-512:]
    (cookie, features, version, offset, _ts, app, _cv, host, orig, cur, cyl, heads, spt,
     dtype, checksum) = struct.unpack(">8sIIQI4sI4sQQHBBII", footer[:68])  # fmt: skip
    assert cookie == b"conectix" and features == 2 and version == 0x00010000
    assert offset == 0xFFFFFFFFFFFFFFFF and dtype == 2  # fixed disk
    assert orig == cur == 65 * MIB and cur % MIB == 0
    assert app == b"cos " and host == b"Wi2k"
    assert cyl * heads * spt * 512 <= cur and heads <= 16 and spt <= 255
    assert checksum == formats.vhd_checksum(footer)
    assert ~sum(footer[:64] + footer[68:]) & 0xFFFFFFFF == checksum
    assert footer[85] == 0 and footer[86:] == b"\0" * 426  # saved state, reserved
    end = 64 * MIB + 4096
    assert data[:8] == b"\xebcos-mbr" and data[end - 6 : end] == b"theend"
    assert data[end : 65 * MIB] == b"\0" * (65 * MIB - end)


def test_vhd_geometry_matches_the_specification() -> None:
    # Values of the reference algorithm for well-known sizes.
    assert formats._chs(64 * MIB) == (963, 8, 17)
    assert formats._chs(127 * 1024 * MIB)[1:] == (16, 255)


def test_gce_tarball_rules(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "x.raw", 1536 * MIB)
    out = tmp_path / "image.tar.gz"
    formats.to_gce(raw, out)
    assert not raw.exists() and not list(tmp_path.glob(".cos-gce-*"))
    with gzip.open(out) as gz:
        header = gz.read(512)
    assert header[257:265] == b"ustar  \0"  # GNU (oldgnu) magic, not POSIX ustar
    with tarfile.open(out, "r:gz") as tar:
        (member,) = tar.getmembers()
        assert member.name == "disk.raw"
        assert member.size == 2048 * MIB  # rounded up to a whole GiB
        f = tar.extractfile(member)
        assert f is not None and f.read(8) == b"\xebcos-mbr"
    assert out.stat().st_size < 10 * MIB  # sparse: zeros are not stored


@pytest.mark.parametrize("size", [MIB, 3 * MIB])
def test_vhd_of_aligned_disk_keeps_its_size(tmp_path: Path, size: int) -> None:
    raw = _raw(tmp_path / "d", size)
    formats.to_vhd(raw)
    assert raw.stat().st_size == size + 512
