"""cos build-disk: an image becomes a bootable disk file (raw, qcow2, vhd or gce).

Everything is built as files, then written into one sparse disk image: no loop
devices, no mounts. The output appears only when complete (built under a temporary
name beside it and renamed), so a failure never leaves a half-written disk.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cos import events
from cos import run as runner
from cos.actions.deploy import (
    RECOVERY_LABEL,
    check_bootable,
    check_cloud_init,
    grub_oem_env,
    image_state,
    install_bootloader,
    install_state,
    make_bootloader,
    write_oem,
    write_recovery,
)
from cos.actions.hooks import run_hook
from cos.config import Config
from cos.disk import formats
from cos.disk import image as diskimg
from cos.disk.plan import MIB, DiskPlan, plan_disk
from cos.errors import DiskError, StateError
from cos.fsutil import fsync_dir
from cos.log import log, step
from cos.oci.image import unpack
from cos.oci.reference import ImageRef, parse_ref
from cos.oci.store import LayerStore, fetch, snapshot_tag
from cos.snapshot import loop as snap
from cos.system.state import write_state

REQUIRED_TOOLS = [
    "sgdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mmd",
    "mcopy",
    "grub-mkimage",
    "mksquashfs",
    "skopeo",
]


DEFAULT_DEPLOY_COMMAND = "cos reset"
EXPAND_CONFIG = "00_expand-disk.yaml"


@dataclass
class BuildDiskRequest:
    image: str
    output: Path
    cloud_init: list[Path] = field(default_factory=list)
    disk_type: str = "raw"
    size_mib: int | None = None
    recovery_image: str | None = None
    # State and persistent partitions made on first boot, then the system deployed by
    # deploy_command from the recovery system.
    expandable: bool = False
    deploy_command: str | None = None  # default: DEFAULT_DEPLOY_COMMAND


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


def _deploy_command(req: BuildDiskRequest, ref: ImageRef, rec_ref: ImageRef) -> str:
    """What deploys an expandable disk's system on first boot. By default `cos reset`
    copies the recovery system; a distinct system image comes from its registry."""
    if req.deploy_command is not None:
        if not req.deploy_command.strip():
            raise DiskError(
                "--deploy-command is empty",
                hint=f"leave it out for the default ({DEFAULT_DEPLOY_COMMAND})",
            )
        return req.deploy_command
    if rec_ref == ref:
        return DEFAULT_DEPLOY_COMMAND
    if ref.transport != "docker":
        raise DiskError(
            f"an expandable disk deploys its system on first boot, and {ref} is a local"
            f" {ref.transport}: reference the booted disk cannot reach",
            hint="give the system as a registry image, or leave out --recovery-image",
        )
    return f"{DEFAULT_DEPLOY_COMMAND} --system {shlex.quote(str(ref))}"


def _ext_overhead(size: int) -> int:
    return size // 20 + 32 * MIB


def build_disk(req: BuildDiskRequest, cfg: Config) -> Path:
    out = req.output.absolute()
    ref = parse_ref(req.image)
    rec_ref = parse_ref(req.recovery_image) if req.recovery_image else ref
    _check_output(out)
    check_cloud_init(req.cloud_init)
    plan = plan_disk(cfg.partitions, cfg.labels, req.size_mib, req.expandable)
    if req.expandable:
        req.deploy_command = _deploy_command(req, ref, rec_ref)
    elif req.deploy_command is not None:
        raise DiskError(
            "--deploy-command only applies to an expandable disk", hint="add --expandable"
        )
    runner.require(*REQUIRED_TOOLS, *(["qemu-img"] if req.disk_type == "qcow2" else []))

    grub_oem_env(cfg)  # fails early when the extra cmdline does not fit
    hooks = [p for p in cfg.cloud_init_paths if Path(p).exists()] + [str(p) for p in req.cloud_init]
    run_hook("before-disk", hooks)

    cache = Path(cfg.cache_dir)
    work = Path(tempfile.mkdtemp(prefix=".cos-build-", dir=out.parent))
    partial = out.with_name(f".{out.name}.partial")
    try:
        _build(req, cfg, ref, rec_ref, plan, cache, work, partial, hooks)
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
    events.summary(output=str(out), bytes=out.stat().st_size)
    return out


def _build(
    req: BuildDiskRequest,
    cfg: Config,
    ref: ImageRef,
    rec_ref: ImageRef,
    plan: DiskPlan,
    cache: Path,
    work: Path,
    partial: Path,
    hooks: list[str],
) -> None:
    tls = cfg.tls_verify
    with step(f"Pulling {ref}"):
        img = fetch(ref, cache, tls, cfg.signature_key(), cfg.arch())
    events.summary(image=str(img.ref), digest=img.digest)
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
    if not req.expandable:
        snapdir = statedir / snap.SNAPSHOTS_DIR
        with step("Building snapshot 1"):
            size = snap.make_snapshot_image(
                tree, snapdir / "1" / snap.IMAGE_NAME, snap.snapshot_label(1), fs=cfg.snapshot_fs
            )
            (snapdir / snap.ACTIVE_LINK).symlink_to(f"1/{snap.IMAGE_NAME}")
        with step("Seeding the layer store"):
            # The first upgrade then pulls only the layers that changed.
            store = LayerStore.on(statedir)
            if img.ref.transport != "dir":  # a tree has no layers to seed
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
            rec_img = fetch(rec_ref, cache, tls, cfg.signature_key(), cfg.arch())
        rec_tree = work / "rec-tree"
        with step(f"Unpacking {rec_ref}"):
            unpack(rec_img, rec_tree)
        rec_boot = check_bootable(rec_tree, rec_ref)
    recdir = work / "recovery"
    with step("Building the recovery system"):
        rec_used = write_recovery(rec_tree, rec_boot, recdir, cfg.recovery_fs)
    _fits(
        "the recovery system",
        rec_used + _ext_overhead(plan.part("recovery").size),
        plan.part("recovery").size,
        "raise partitions.recovery in config",
    )

    state = install_state(
        cfg,
        None
        if req.expandable
        else image_state(
            str(img.ref), img.digest, tree, snap.snapshot_label(1), cfg.snapshot_fs, True
        ),
        image_state(
            str(rec_img.ref), rec_img.digest, rec_tree, RECOVERY_LABEL, cfg.recovery_fs, False
        ),
    )
    if not req.expandable:
        write_state(statedir, state)
    write_state(recdir, state)
    oemdir = work / "oem"
    write_oem(oemdir, req.cloud_init)
    if req.expandable:
        assert req.deploy_command is not None
        (oemdir / EXPAND_CONFIG).write_text(expand_config(cfg, req.deploy_command))
    bl = make_bootloader(tree, boot, cfg, work, plan.part("efi").size)
    with step("Removing the unpacked tree"):
        # Nothing reads the trees again. Removed now, much of their data is still page
        # cache that is dropped unwritten; removed after the disk is written, every
        # unlink queues behind the writeback of the disk image (seconds per GiB).
        for t in {tree, rec_tree}:
            shutil.rmtree(t)

    with step(f"Partitioning a {plan.size_mib} MiB disk"):
        diskimg.create_sparse(partial, plan.size_mib * MIB)
        diskimg.partition(partial, plan)

    with step("Writing filesystems"):
        filled = [("oem", oemdir), ("recovery", recdir)]
        if not req.expandable:
            filled.append(("state", statedir))
        for name, src in filled:
            p = plan.part(name)
            assert p.label is not None
            diskimg.mkfs_ext4(partial, p.label, size=p.size, offset=p.offset, source=src)
        if not req.expandable:
            p = plan.part("persistent")
            assert p.label is not None
            diskimg.mkfs_ext4(partial, p.label, size=p.size, offset=p.offset)

    with step("Installing GRUB (ESP and BIOS boot code)"):
        install_bootloader(partial, plan, bl, sparse=True)

    if req.disk_type == "qcow2":
        with step("Converting to qcow2"):
            raw = partial.with_name(partial.name + ".raw")
            os.replace(partial, raw)
            try:
                runner.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)])
            finally:
                raw.unlink(missing_ok=True)
    elif req.disk_type == "vhd":
        with step("Appending the fixed VHD footer"):
            formats.to_vhd(partial)
    elif req.disk_type == "gce":
        with step("Packing disk.raw into a GCE tarball"):
            raw = partial.with_name(partial.name + ".raw")
            os.replace(partial, raw)
            try:
                formats.to_gce(raw, partial)
            finally:
                raw.unlink(missing_ok=True)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())


def expand_config(cfg: Config, deploy_command: str) -> str:
    """The first-boot cloud-config of an expandable disk, kept on COS_OEM.

    GRUB boots recovery while there is no state filesystem; there, in the boot stage,
    the state and persistent partitions are added after recovery (persistent takes
    the rest of the disk, however large it has become) and the system is deployed.
    The file removes itself only once the deploy succeeded, so an interruption (power
    loss) repeats the whole step on the next boot: adding partitions skips those that
    exist, and the deploy formats the state partition again.
    """
    me = f"{cfg.layout.oem_mount.rstrip('/')}/{EXPAND_CONFIG}"
    guard = f"[ -e /run/cos/recovery_mode ] && [ -e {me} ]"
    p, labels = cfg.partitions, cfg.labels
    doc = {
        "name": "Expand the disk and deploy the system (first boot of an expandable disk)",
        "stages": {
            "boot": [
                {
                    "name": "Add the state and persistent partitions",
                    "if": guard,
                    "layout": {
                        "device": {"path": f"script://{_RECOVERY_DISK.format(labels.recovery)}"},
                        "add_partitions": [
                            {
                                "fsLabel": labels.state,
                                "pLabel": "state",
                                "size": p.state,
                                "filesystem": "ext4",
                            },
                            {
                                "fsLabel": labels.persistent,
                                "pLabel": "persistent",
                                "size": p.persistent,
                                "filesystem": "ext4",
                            },
                        ],
                    },
                },
                {
                    "name": "Deploy the system from recovery, then boot it",
                    "if": guard,
                    "commands": [f"{deploy_command} && rm -f {me} && sync && systemctl reboot"],
                },
            ]
        },
    }
    return "# Written by cos build-disk --expandable; removes itself once deployed.\n" + (
        yaml.safe_dump(doc, sort_keys=False, width=1000)
    )


# The disk holding the recovery partition the system booted from (found by its
# filesystem label, the partition, then its parent disk).
_RECOVERY_DISK = "echo /dev/$(lsblk -no PKNAME $(blkid -L {}) | head -n1)"
