"""Pieces build-disk and install share: the recovery system, the ESP and the BIOS
boot code, the OEM partition, state.yaml. Each works from an image tree and writes
into a directory or onto a disk (file or block device) at the plan's offsets."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from cos.boot import assessment, grub, grubenv
from cos.config import Config, read_yaml_mapping
from cos.disk import image as diskimg
from cos.disk.plan import DiskPlan
from cos.errors import ConfigError, ImageError, StateError
from cos.fsutil import atomic_symlink, fsync_dir, regular_file_in_tree
from cos.log import step
from cos.oci.reference import ImageRef, parse_ref
from cos.snapshot import loop as snap
from cos.system.kernel import require_kernel
from cos.system.release import read_os_release
from cos.system.state import ImageState, InstallState, now

RECOVERY_LABEL = "COS_SYSTEM"


@dataclass(frozen=True)
class BootFiles:
    """Files taken from an image, resolved inside its tree (never the host's)."""

    vmlinuz: Path
    initrd: Path
    grub_cfg: Path
    bootargs: Path | None


def check_bootable(tree: Path, ref: ImageRef | str) -> BootFiles:
    """The tree must carry a kernel, an initrd and the cos boot config (cos init)."""
    require_kernel(tree, f"image {ref}")
    vmlinuz = regular_file_in_tree(tree, "/boot/vmlinuz")
    initrd = regular_file_in_tree(tree, "/boot/initrd")
    grub_cfg = regular_file_in_tree(tree, "/etc/cos/grub.cfg")
    if vmlinuz is None or initrd is None or grub_cfg is None:
        raise ImageError(
            f"image {ref} was not prepared by cos init (no /boot/initrd or /etc/cos/grub.cfg)",
            hint="add 'RUN cos init' to the Containerfile of the image",
        )
    return BootFiles(vmlinuz, initrd, grub_cfg, regular_file_in_tree(tree, "/etc/cos/bootargs.cfg"))


def image_state(
    source: str,
    digest: str,
    tree: Path,
    label: str,
    fs: str,
    active: bool,
    from_action: str = "build-disk",
) -> ImageState:
    """What state.yaml records of a snapshot or recovery system made from tree."""
    rel = read_os_release(tree)
    keep: dict[str, str] = {
        k: rel[k] for k in ("NAME", "VERSION_ID", "IMAGE_REPO", "IMAGE_TAG", "IMAGE") if k in rel
    }
    return ImageState(
        source=source,
        digest=digest,
        label=label,
        fs=fs,
        date=now(),
        from_action=from_action,
        os_release=keep,
        active=active,
    )


def install_state(
    cfg: Config, snapshot: ImageState | None, recovery: ImageState | None
) -> InstallState:
    """state.yaml of a new disk; without a snapshot (an expandable disk) only the
    recovery system is recorded, and the first-boot deploy adds snapshot 1."""
    labels = cfg.labels
    state = InstallState(
        date=now(),
        snapshotter={"type": "loopdevice", "max-snaps": cfg.max_snaps, "fs": cfg.snapshot_fs},
        labels={
            "efi": labels.efi,
            "oem": labels.oem,
            "recovery": labels.recovery,
            "state": labels.state,
            "persistent": labels.persistent,
        },
        snapshots={1: snapshot} if snapshot is not None else {},
        recovery=recovery,
    )
    if snapshot is not None:
        state.record(snapshot.from_action, 1, snapshot)
    elif recovery is not None:
        state.record(recovery.from_action, None, recovery)
    return state


def write_recovery(tree: Path, boot: BootFiles, recdir: Path, fs: str, generation: int = 1) -> int:
    """recovery.img (squashfs or ext image of tree) + kernel, initrd, bootargs.

    They go into recdir/boot.<generation>/, made durable, and then the `boot` link is
    renamed onto that directory: GRUB and the initrd read `/boot/…` through it, so a
    recovery system is replaced in one atomic step. Returns the bytes written.
    """
    gen = recdir / f"boot.{generation}"
    gen.mkdir(parents=True, exist_ok=True)
    if fs == "squashfs":
        diskimg.mksquashfs(tree, gen / "recovery.img")
    else:
        snap.make_snapshot_image(tree, gen / "recovery.img", RECOVERY_LABEL, fs=fs)
    shutil.copyfile(boot.vmlinuz, gen / "vmlinuz")
    shutil.copyfile(boot.initrd, gen / "initrd")
    if boot.bootargs is not None:
        shutil.copyfile(boot.bootargs, gen / "bootargs.cfg")
    total = 0
    for f in gen.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        total += f.stat().st_size
    fsync_dir(gen)
    atomic_symlink(gen.name, recdir / "boot")
    return total


def recovery_generations(recdir: Path) -> list[int]:
    return sorted(
        int(d.name.split(".", 1)[1])
        for d in recdir.glob("boot.*")
        if d.is_dir() and d.name.split(".", 1)[1].isdigit()
    )


def check_cloud_init(files: list[Path]) -> None:
    for f in files:
        if not f.is_file():
            raise ConfigError(
                f"cloud-init file {f} does not exist", hint="check the --cloud-init path"
            )
        read_yaml_mapping(f)


def require_registry(source: str, action: str, hint: str) -> ImageRef:
    """Parse source; actions that pull on the device take registry references only."""
    ref = parse_ref(source)
    if ref.transport != "docker":
        raise StateError(
            f"{action} pulls from a registry; {ref} is a local {ref.transport}: reference",
            hint=hint,
        )
    return ref


def cloud_init_names(files: list[Path]) -> list[str]:
    if len(files) == 1:
        return ["90_custom.yaml"]
    return [f"90_custom-{i}.yaml" for i in range(1, len(files) + 1)]


def write_oem(oemdir: Path, cloud_init: list[Path]) -> None:
    """A fresh boot env (empty snapshot menu) and the --cloud-init files, private."""
    oemdir.mkdir(parents=True, exist_ok=True)
    grubenv.write(oemdir / assessment.ENV_FILE, {assessment.PASSIVE: ""})
    for src, name in zip(cloud_init, cloud_init_names(cloud_init), strict=True):
        shutil.copyfile(src, oemdir / name)
        (oemdir / name).chmod(0o600)


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
