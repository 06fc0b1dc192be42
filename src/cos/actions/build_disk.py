"""cos build-disk: an image becomes a bootable disk file (raw or qcow2).

Everything is built as files, then written into one sparse disk image: no loop
devices, no mounts. The output appears only when complete (built under a temporary
name beside it and renamed), so a failure never leaves a half-written disk.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cos import run as runner
from cos.actions.hooks import run_hook
from cos.boot import assessment, grub, grubenv
from cos.config import Config, read_yaml_mapping
from cos.disk import image as diskimg
from cos.disk.plan import MIB, DiskPlan, plan_disk
from cos.errors import ConfigError, DiskError, ImageError, StateError
from cos.fsutil import fsync_dir, regular_file_in_tree
from cos.log import log, step
from cos.oci.image import fetch, unpack
from cos.oci.reference import ImageRef, parse_ref
from cos.oci.store import LayerStore, snapshot_tag
from cos.snapshot import loop as snap
from cos.system.kernel import require_kernel
from cos.system.release import read_os_release
from cos.system.state import ImageState, InstallState, now, write_state

RECOVERY_LABEL = "COS_SYSTEM"
REQUIRED_TOOLS = [
    "sgdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mmd",
    "mcopy",
    "grub-mkimage",
    "mksquashfs",
    "umoci",
    "skopeo",
]


@dataclass
class BuildDiskRequest:
    image: str
    output: Path
    cloud_init: list[Path] = field(default_factory=list)
    disk_type: str = "raw"
    size_mib: int | None = None
    recovery_image: str | None = None


@dataclass(frozen=True)
class BootFiles:
    """Files build-disk takes from an image, resolved inside its tree (never the host's)."""

    vmlinuz: Path
    initrd: Path
    grub_cfg: Path
    bootargs: Path | None


def check_bootable(tree: Path, ref: ImageRef) -> BootFiles:
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


def _check_cloud_init(files: list[Path]) -> None:
    for f in files:
        if not f.is_file():
            raise ConfigError(
                f"cloud-init file {f} does not exist", hint="check the --cloud-init path"
            )
        read_yaml_mapping(f)


def cloud_init_names(files: list[Path]) -> list[str]:
    if len(files) == 1:
        return ["90_custom.yaml"]
    return [f"90_custom-{i}.yaml" for i in range(1, len(files) + 1)]


def _check_output(out: Path) -> None:
    if not out.parent.is_dir():
        raise DiskError(f"output directory {out.parent} does not exist", hint="create it first")
    if out.exists() and not out.is_file():
        raise DiskError(f"output {out} exists and is not a regular file", hint="choose another -o")
    if not os.access(out.parent, os.W_OK):
        raise DiskError(
            f"cannot write to {out.parent}", hint="choose another -o or fix permissions"
        )
    if os.geteuid() != 0:
        raise StateError(
            "build-disk needs root: image trees keep their owners and device nodes",
            hint="run it as root (sudo cos build-disk …)",
        )


def _fits(what: str, need: int, have: int, hint: str) -> None:
    if need > have:
        raise DiskError(
            f"{what} needs {-(-need // MIB)} MiB but the partition has {have // MIB} MiB",
            hint=hint,
        )


def _ext_overhead(size: int) -> int:
    return size // 20 + 32 * MIB


def build_disk(req: BuildDiskRequest, cfg: Config) -> Path:
    out = req.output.absolute()
    ref = parse_ref(req.image)
    rec_ref = parse_ref(req.recovery_image) if req.recovery_image else ref
    _check_output(out)
    _check_cloud_init(req.cloud_init)
    plan = plan_disk(cfg.partitions, cfg.labels, req.size_mib)
    runner.require(*REQUIRED_TOOLS, *(["qemu-img"] if req.disk_type == "qcow2" else []))

    oem_env = _grub_oem_env(cfg)  # fails early when the extra cmdline does not fit
    hooks = [p for p in cfg.cloud_init_paths if Path(p).exists()] + [str(p) for p in req.cloud_init]
    run_hook("before-disk", hooks)

    cache = Path(cfg.cache_dir)
    work = Path(tempfile.mkdtemp(prefix=".cos-build-", dir=out.parent))
    partial = out.with_name(f".{out.name}.partial")
    try:
        _build(req, cfg, ref, rec_ref, plan, cache, work, partial, oem_env, hooks)
        os.replace(partial, out)
        fsync_dir(out.parent)
        run_hook("after-disk", hooks)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DiskError(
            f"writing the disk failed: {exc.strerror or exc} ({exc.filename or out.parent})",
            hint="check free space and permissions where OUT and its temporary files are written",
        ) from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("Disk ready: %s (%s, %d MiB)", out, req.disk_type, plan.size_mib)
    return out


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


def _grub_oem_env(cfg: Config) -> bytes:
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


def _build(
    req: BuildDiskRequest,
    cfg: Config,
    ref: ImageRef,
    rec_ref: ImageRef,
    plan: DiskPlan,
    cache: Path,
    work: Path,
    partial: Path,
    oem_env: bytes,
    hooks: list[str],
) -> None:
    labels = cfg.labels
    tls = cfg.tls_verify
    with step(f"Pulling {ref}"):
        img = fetch(ref, cache, tls)
    tree = work / "tree"
    with step(f"Unpacking {ref} ({img.digest[:19]})"):
        unpack(img, tree)
    boot = check_bootable(tree, ref)
    image_oem = tree / "system/oem"
    with step("Running the after-disk-chroot hook"):
        run_hook(
            "after-disk-chroot", ([str(image_oem)] if image_oem.is_dir() else []) + hooks, tree
        )

    statedir = work / "state"
    snapdir = statedir / snap.SNAPSHOTS_DIR
    with step("Building snapshot 1"):
        size = snap.make_snapshot_image(
            tree, snapdir / "1" / snap.IMAGE_NAME, snap.snapshot_label(1), fs=cfg.snapshot_fs
        )
        (snapdir / snap.ACTIVE_LINK).symlink_to(f"1/{snap.IMAGE_NAME}")
    with step("Seeding the layer store"):
        # The first upgrade then pulls only the layers that changed.
        store = LayerStore.on(statedir)
        store.add(img, snapshot_tag(1))
    store_size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    _fits(
        f"the state partition ({cfg.max_snaps} snapshots of {size // MIB} MiB + layer store)",
        size * cfg.max_snaps + 2 * store_size + _ext_overhead(plan.part("state").size),
        plan.part("state").size,
        "raise partitions.state in config, or lower max-snaps",
    )

    rec_tree, rec_img, rec_boot = tree, img, boot
    if rec_ref != ref:
        with step(f"Pulling recovery image {rec_ref}"):
            rec_img = fetch(rec_ref, cache, tls)
        rec_tree = work / "rec-tree"
        with step(f"Unpacking {rec_ref}"):
            unpack(rec_img, rec_tree)
        rec_boot = check_bootable(rec_tree, rec_ref)
    recdir = work / "recovery"
    with step("Building the recovery system"):
        (recdir / "boot").mkdir(parents=True)
        if cfg.recovery_fs == "squashfs":
            diskimg.mksquashfs(rec_tree, recdir / "boot/recovery.img")
        else:
            snap.make_snapshot_image(
                rec_tree, recdir / "boot/recovery.img", RECOVERY_LABEL, fs=cfg.recovery_fs
            )
        shutil.copyfile(rec_boot.vmlinuz, recdir / "boot/vmlinuz")
        shutil.copyfile(rec_boot.initrd, recdir / "boot/initrd")
        if rec_boot.bootargs is not None:
            shutil.copyfile(rec_boot.bootargs, recdir / "boot/bootargs.cfg")
    rec_used = sum(p.stat().st_size for p in (recdir / "boot").iterdir())
    _fits(
        "the recovery system",
        rec_used + _ext_overhead(plan.part("recovery").size),
        plan.part("recovery").size,
        "raise partitions.recovery in config",
    )

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
        snapshots={
            1: image_state(
                str(img.ref), img.digest, tree, snap.snapshot_label(1), cfg.snapshot_fs, True
            )
        },
        recovery=image_state(
            str(rec_img.ref), rec_img.digest, rec_tree, RECOVERY_LABEL, cfg.recovery_fs, False
        ),
    )
    write_state(statedir, state)
    write_state(recdir, state)

    oemdir = work / "oem"
    oemdir.mkdir()
    grubenv.write(oemdir / "grubenv", {assessment.PASSIVE: ""})
    for src, name in zip(req.cloud_init, cloud_init_names(req.cloud_init), strict=True):
        shutil.copyfile(src, oemdir / name)
        (oemdir / name).chmod(0o600)

    espdir = work / "esp"
    espdir.mkdir()
    volume_id = secrets.token_hex(4).upper()
    esp_uuid = f"{volume_id[:4]}-{volume_id[4:]}"
    with step("Preparing GRUB (BIOS and EFI)"):
        early = espdir / "early.cfg"
        early.write_text(grub.early_config(esp_uuid))
        bios_mods = grub.stage_modules(tree, "i386-pc", work / "grub-mods/i386-pc")
        efi_mods = grub.stage_modules(tree, "x86_64-efi", work / "grub-mods/x86_64-efi")
        grub.mkimage(bios_mods, "i386-pc", espdir / "core.img", early)
        grub.mkimage(efi_mods, "x86_64-efi", espdir / "BOOTX64.EFI", early)
        (espdir / "grub_oem_env").write_bytes(oem_env)
        shutil.copyfile(boot.grub_cfg, espdir / "grub.cfg")

    with step(f"Partitioning a {plan.size_mib} MiB disk"):
        diskimg.create_sparse(partial, plan.size_mib * MIB)
        diskimg.partition(partial, plan)

    with step("Writing filesystems"):
        efi = plan.part("efi")
        esp_img = work / "esp.img"
        diskimg.mkfs_vfat(
            esp_img,
            labels.efi,
            efi.size,
            volume_id,
            {
                "EFI/BOOT/BOOTX64.EFI": espdir / "BOOTX64.EFI",
                "grub/grub.cfg": espdir / "grub.cfg",
                "grub_oem_env": espdir / "grub_oem_env",
                "grub/i386-pc": bios_mods,
                "grub/x86_64-efi": efi_mods,
            },
        )
        diskimg.copy_into(partial, esp_img, efi.offset)
        for name, src in (("oem", oemdir), ("recovery", recdir), ("state", statedir)):
            p = plan.part(name)
            assert p.label is not None
            diskimg.mkfs_ext4(partial, p.label, size=p.size, offset=p.offset, source=src)
        p = plan.part("persistent")
        assert p.label is not None
        diskimg.mkfs_ext4(partial, p.label, size=p.size, offset=p.offset)

    with step("Installing GRUB for BIOS"):
        bios = plan.part("bios")
        grub.embed_bios(
            partial, bios_mods / "boot.img", espdir / "core.img", bios.start_lba, bios.size // 512
        )

    if req.disk_type == "qcow2":
        with step("Converting to qcow2"):
            raw = partial.with_name(partial.name + ".raw")
            os.replace(partial, raw)
            try:
                runner.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)])
            finally:
                raw.unlink(missing_ok=True)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
