from __future__ import annotations

import struct
from pathlib import Path

import pytest

from cos.boot.grub import early_config, embed_bios
from cos.errors import ImageError


def test_embed_patches_boot_and_core(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    mbr = bytearray(512)
    mbr[0x1B8:0x1BC] = b"SIGN"
    mbr[0x1FE:0x200] = b"\x55\xaa"
    disk.write_bytes(bytes(mbr) + bytes(4096 * 512))
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(range(256)) * 2)
    core = tmp_path / "core.img"
    core.write_bytes(b"\x01" * 1300)  # 3 sectors once padded

    embed_bios(disk, boot, core, start_lba=2048, max_sectors=2048)

    data = disk.read_bytes()
    assert struct.unpack_from("<Q", data, 0x5C)[0] == 2048
    assert data[0x64] == 0xFF and data[0x66:0x68] == b"\x90\x90"
    assert data[0x1B8:0x1BC] == b"SIGN" and data[0x1FE:0x200] == b"\x55\xaa"
    core_at = 2048 * 512
    assert struct.unpack_from("<QHH", data, core_at + 512 - 12) == (2049, 2, 0x820)
    assert data[core_at + 1024 : core_at + 1300] == b"\x01" * 276


def test_core_too_big_for_bios_partition(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(512 * 8))
    (tmp_path / "b").write_bytes(bytes(512))
    (tmp_path / "c").write_bytes(bytes(512 * 5))
    with pytest.raises(ImageError, match="does not fit"):
        embed_bios(disk, tmp_path / "b", tmp_path / "c", 1, 4)


def test_early_config_finds_the_esp_by_uuid() -> None:
    cfg = early_config("ABCD-1234")
    assert "--fs-uuid --set=root ABCD-1234" in cfg and "prefix=($root)/grub" in cfg
