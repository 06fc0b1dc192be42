"""GRUB for BIOS and EFI on one disk, without grub-install.

grub-install needs to map partitions to GRUB drives, which fails on loop devices and
disk image files. Build tools therefore do what it does by hand: grub-mkimage makes
the core image (BIOS) and the EFI binary from the image's own GRUB modules; the
BIOS core image goes into the `bios` partition and boot.img into the MBR, patched
the way grub-bios-setup patches it.
"""

from __future__ import annotations

import shutil
import stat
import struct
from pathlib import Path

from cos import run as runner
from cos.errors import ImageError
from cos.fsutil import resolve_in_tree

# Modules built into both core images; the rest are copied to the ESP for insmod.
COMMON_MODULES = [
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "iso9660",
    "squash4",
    "loopback",
    "search",
    "search_label",
    "search_fs_uuid",
    "search_fs_file",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "loadenv",
    "ls",
    "cat",
    "sleep",
    "gzio",
    "xzio",
    "true",
    "halt",
    "reboot",
    "regexp",
    "minicmd",
]
PLATFORM_MODULES = {
    "i386-pc": ["biosdisk"],
    "x86_64-efi": ["efi_gop", "efi_uga", "all_video"],
}


def stage_modules(tree: Path, platform: str, dest: Path) -> Path:
    """Copy the image's GRUB modules for platform into dest, regular files only.

    Everything GRUB-related is taken from the image, never from the host; staging
    the files first means a symlink in the image cannot pull a host file into the
    disk.
    """
    src = resolve_in_tree(tree, f"/usr/lib/grub/{platform}")
    if src is None or not (src / "kernel.img").is_file() or (src / "kernel.img").is_symlink():
        pkg = "grub-pc-bin" if platform == "i386-pc" else "grub-efi-amd64-bin"
        raise ImageError(
            f"the image has no GRUB modules for {platform} (/usr/lib/grub/{platform})",
            hint=f"install {pkg} in the image",
        )
    dest.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.is_symlink() or not stat.S_ISREG(entry.lstat().st_mode):
            continue
        shutil.copyfile(entry, dest / entry.name)
    return dest


def early_config(esp_uuid: str) -> str:
    """Config embedded in the core images: find the ESP, read grub.cfg from it."""
    return f"search --no-floppy --fs-uuid --set=root {esp_uuid}\nset prefix=($root)/grub\n"


def mkimage(modules: Path, platform: str, output: Path, early_cfg: Path) -> None:
    fmt = {"i386-pc": "i386-pc", "x86_64-efi": "x86_64-efi"}[platform]
    mods = COMMON_MODULES + PLATFORM_MODULES[platform]
    runner.run(
        [
            "grub-mkimage",
            "-d",
            str(modules),
            "-O",
            fmt,
            "-o",
            str(output),
            "-c",
            str(early_cfg),
            "-p",
            "/grub",
            *mods,
        ]
    )


def embed_bios(
    disk: Path, boot_img: Path, core_img: Path, start_lba: int, max_sectors: int
) -> None:
    """Install boot.img into the MBR and core.img at start_lba (the bios partition).

    Keeps the disk signature and partition table of the existing MBR (bytes
    0x1b8-0x1ff, the protective MBR written by sgdisk).
    """
    boot = bytearray(boot_img.read_bytes())
    core = bytearray(core_img.read_bytes())
    if len(boot) != 512:
        raise ImageError(f"{boot_img} is not a 512-byte boot sector")
    core += b"\0" * (-len(core) % 512)
    nsec = len(core) // 512
    if nsec > max_sectors:
        raise ImageError(
            f"GRUB core image ({nsec} sectors) does not fit the bios partition ({max_sectors})"
        )
    # diskboot.img (the first sector of core.img) ends with a blocklist telling it
    # where the rest of core.img is: start sector, sector count, load segment.
    struct.pack_into("<QHH", core, 512 - 12, start_lba + 1, nsec - 1, 0x820)
    # boot.img: where core.img starts; take the boot drive from the BIOS (0xff) and
    # skip the drive check (two NOPs), as grub-bios-setup does for hard disks.
    struct.pack_into("<Q", boot, 0x5C, start_lba)
    boot[0x64] = 0xFF
    boot[0x66:0x68] = b"\x90\x90"
    with open(disk, "r+b") as f:
        mbr = f.read(512)
        boot[0x1B8:0x200] = mbr[0x1B8:0x200]
        f.seek(0)
        f.write(boot)
        f.seek(start_lba * 512)
        f.write(core)
