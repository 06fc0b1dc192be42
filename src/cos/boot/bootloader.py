"""GRUB for BIOS and EFI on a cos disk, built from the image's own GRUB modules.

The ESP is assembled as a FAT image file and copied to its offset; the BIOS boot
code goes into the MBR and the bios partition. Nothing here needs a loop device.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cos.boot import grub, grubenv
from cos.config import Config
from cos.disk import image as diskimg
from cos.disk.plan import DiskPlan
from cos.log import step
from cos.system.kernel import BootFiles

# What writing a bootable cos disk takes (build-disk; install adds device tools).
DISK_TOOLS = ["sgdisk", "mkfs.ext4", "mkfs.vfat", "mmd", "mcopy", "grub-mkimage", "mksquashfs"]


def grub_oem_env(cfg: Config) -> bytes:
    """The toolkit's fixed GRUB variables (labels, fallback, timeout) for the ESP.

    What changes with upgrades (the snapshot menu, boot assessment) lives in the
    grubenv on COS_OEM instead, so an upgrade never has to rewrite the ESP."""
    labels = cfg.labels
    env = {
        "state_label": labels.state,
        "recovery_label": labels.recovery,
        "oem_label": labels.oem,
        "persistent_label": labels.persistent,
        "efi_label": labels.efi,
        "default_fallback": "recovery",
        "grub_timeout": str(cfg.grub_timeout),
    }
    if cfg.extra_cmdline:
        env["extra_cmdline"] = cfg.extra_cmdline
    return grubenv.render(env)


def check_grub_env_fits(cfg: Config) -> None:
    """Before any write: grub_oem_env has a fixed size, and a long extra-cmdline may
    not fit in it (grubenv.render refuses)."""
    grub_oem_env(cfg)


@dataclass(frozen=True)
class Bootloader:
    esp_image: Path  # a FAT32 filesystem image of the ESP, ready to copy
    core_img: Path  # BIOS core image for the bios partition
    boot_img: Path  # BIOS boot sector


def make_bootloader(tree: Path, boot: BootFiles, cfg: Config, work: Path, size: int) -> Bootloader:
    """GRUB for BIOS and EFI from the image's own modules, and the ESP as an image file."""
    espdir = work / "esp"
    espdir.mkdir(parents=True)
    volume_id = secrets.token_hex(4).upper()
    with step("Preparing GRUB (BIOS and EFI)"):
        early = espdir / "early.cfg"
        early.write_text(grub.early_config(f"{volume_id[:4]}-{volume_id[4:]}"))
        bios_mods = grub.stage_modules(tree, "i386-pc", work / "grub-mods/i386-pc")
        efi_mods = grub.stage_modules(tree, "x86_64-efi", work / "grub-mods/x86_64-efi")
        grub.mkimage(bios_mods, "i386-pc", espdir / "core.img", early)
        grub.mkimage(efi_mods, "x86_64-efi", espdir / "BOOTX64.EFI", early)
        (espdir / "grub_oem_env").write_bytes(grub_oem_env(cfg))
        shutil.copyfile(boot.grub_cfg, espdir / "grub.cfg")
        esp_img = work / "esp.img"
        diskimg.mkfs_vfat(
            esp_img,
            cfg.labels.efi,
            size,
            volume_id,
            {
                "EFI/BOOT/BOOTX64.EFI": espdir / "BOOTX64.EFI",
                "grub/grub.cfg": espdir / "grub.cfg",
                "grub_oem_env": espdir / "grub_oem_env",
                "grub/i386-pc": bios_mods,
                "grub/x86_64-efi": efi_mods,
            },
        )
    return Bootloader(esp_img, espdir / "core.img", bios_mods / "boot.img")


def install_bootloader(disk: Path, plan: DiskPlan, bl: Bootloader, sparse: bool) -> None:
    """ESP contents at its offset, boot.img into the MBR, core.img into the bios partition."""
    diskimg.copy_into(disk, bl.esp_image, plan.part("efi").offset, sparse=sparse)
    bios = plan.part("bios")
    grub.embed_bios(disk, bl.boot_img, bl.core_img, bios.start_lba, bios.size // 512)
