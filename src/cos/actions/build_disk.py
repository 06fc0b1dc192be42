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

from cos import events
from cos import run as runner
from cos.boot.bootloader import (
    DISK_TOOLS,
    Bootloader,
    check_grub_env_fits,
    install_bootloader,
    make_bootloader,
)
from cos.boot.oem import write_oem
from cos.boot.recovery import RECOVERY_LABEL, write_recovery
from cos.cloudinit.hooks import run_hook
from cos.cloudinit.sandbox import run_sandboxed_hook
from cos.cloudinit.sources import build_sources, check_cloud_init
from cos.config import Config, SnapshotterKind
from cos.disk import formats
from cos.disk import image as diskimg
from cos.disk.expandable import DEFAULT_DEPLOY_COMMAND, EXPAND_CONFIG, expand_config
from cos.disk.formats import DiskType
from cos.disk.plan import MIB, DiskPlan, plan_disk
from cos.errors import DiskError, StateError
from cos.fsutil import ceil_div, fsync_dir
from cos.log import log, step
from cos.oci.digest import short_digest
from cos.oci.image import LocalImage, unpack
from cos.oci.reference import ImageRef, parse_ref
from cos.oci.store import LayerStore, fetch, snapshot_tag
from cos.snapshot import new_snapshotter
from cos.snapshot.base import Snapshotter, snapshot_label
from cos.system.kernel import BootFiles, check_bootable
from cos.system.state import ImageState, InstallState, write_state

REQUIRED_TOOLS = [*DISK_TOOLS, "skopeo", "unshare"]


@dataclass(frozen=True, kw_only=True)
class BuildDiskRequest:
    image: str
    output: Path
    cloud_init: list[Path] = field(default_factory=list)
    disk_type: DiskType = DiskType.RAW
    size_mib: int | None = None
    recovery_image: str | None = None
    # State and persistent partitions made on first boot, then the system deployed by
    # deploy_command from the recovery system.
    expandable: bool = False
    deploy_command: str | None = None  # default: DEFAULT_DEPLOY_COMMAND


@dataclass(frozen=True)
class _Build:
    """One build in progress: the request checked and resolved, where it works."""

    req: BuildDiskRequest
    cfg: Config
    ref: ImageRef
    rec_ref: ImageRef
    plan: DiskPlan
    deploy_command: str | None  # set for an expandable disk
    hooks: list[str]
    work: Path
    partial: Path


@dataclass(frozen=True)
class _Tree:
    """An image unpacked into the work dir, with its boot files."""

    image: LocalImage
    tree: Path
    boot: BootFiles


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
            f"{what} needs {ceil_div(need, MIB)} MiB but the partition has {have // MIB} MiB",
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
    deploy_command = _deploy_command(req, ref, rec_ref) if req.expandable else None
    if not req.expandable and req.deploy_command is not None:
        raise DiskError(
            "--deploy-command only applies to an expandable disk", hint="add --expandable"
        )
    runner.require(*REQUIRED_TOOLS, *(["qemu-img"] if req.disk_type == DiskType.QCOW2 else []))
    check_grub_env_fits(cfg)

    hooks = build_sources(cfg, req.cloud_init)
    run_hook("before-disk", hooks)
    work = Path(tempfile.mkdtemp(prefix=".cos-build-", dir=out.parent))
    partial = out.with_name(f".{out.name}.partial")
    try:
        _build(_Build(req, cfg, ref, rec_ref, plan, deploy_command, hooks, work, partial))
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


def _build(b: _Build) -> None:
    if b.cfg.snapshotter == SnapshotterKind.LAYERS and b.deploy_command is None:
        _build_on_layers(b)
        return
    system = _unpack(b, b.ref, b.work / "tree", "Pulling", "Unpacking")
    events.summary(image=str(system.image.ref), digest=system.image.digest)
    _disk_hook(b, system.tree)
    recovery = (
        system
        if b.rec_ref == b.ref
        else _unpack(b, b.rec_ref, b.work / "rec-tree", "Pulling recovery image", "Unpacking")
    )
    state = InstallState.new(b.cfg, recovery=_recovery_partition(b, recovery))
    write_oem(b.work / "oem", b.req.cloud_init)
    if b.deploy_command is not None:
        (b.work / "oem" / EXPAND_CONFIG).write_text(expand_config(b.cfg, b.deploy_command))
        state.record("build-disk", None, state.recovery)
    else:
        snaps = new_snapshotter(b.work / "state", b.cfg.snapshot_fs, b.cfg.snapshotter)
        with step("Building snapshot 1"):
            n = snaps.from_tree(system.tree)
        _state_partition(b, snaps, system, n, state)
    write_state(b.work / "recovery", state)
    bl = make_bootloader(system.tree, system.boot, b.cfg, b.work, b.plan.part("efi").size)
    _remove_trees(system, recovery)
    _finish(b, bl)


def _build_on_layers(b: _Build) -> None:
    """Snapshot 1 straight from the image's layers (the first upgrade then adds only the
    layers that changed): the hook runs in its stack, and the recovery system and GRUB
    are taken from there; nothing is unpacked twice."""
    cfg = b.cfg
    with step(f"Pulling {b.ref}"):
        img = fetch(b.ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
    events.summary(image=str(img.ref), digest=img.digest)
    snaps = new_snapshotter(b.work / "state", cfg.snapshot_fs, cfg.snapshotter)
    with step("Building snapshot 1"), snaps.start(img, 0, b.work / "snap") as p:
        system = _Tree(img, p.tree, check_bootable(p.tree, b.ref))
        _disk_hook(b, p.tree)
        recovery = (
            system
            if b.rec_ref == b.ref
            else _unpack(b, b.rec_ref, b.work / "rec-tree", "Pulling recovery image", "Unpacking")
        )
        state = InstallState.new(cfg, recovery=_recovery_partition(b, recovery))
        bl = make_bootloader(p.tree, system.boot, cfg, b.work, b.plan.part("efi").size)
        record = _record(system, snapshot_label(p.number), cfg.snapshot_fs)
    write_oem(b.work / "oem", b.req.cloud_init)
    _state_partition(b, snaps, system, p.number, state, record)
    write_state(b.work / "recovery", state)
    if recovery is not system:
        _remove_trees(recovery)
    _finish(b, bl)


def _disk_hook(b: _Build, tree: Path) -> None:
    image_oem = tree / "system/oem"
    with step("Running the after-disk-chroot hook"):
        own = [str(image_oem)] if image_oem.is_dir() else []
        run_sandboxed_hook(
            "after-disk-chroot", own + b.hooks, tree, network=b.cfg.build_hooks_network
        )


def _remove_trees(*trees: _Tree) -> None:
    with step("Removing the unpacked tree"):
        # Nothing reads the trees again. Removed now, much of their data is still page
        # cache that is dropped unwritten; removed after the disk is written, every
        # unlink queues behind the writeback of the disk image (seconds per GiB).
        for t in {t.tree for t in trees}:
            shutil.rmtree(t)


def _finish(b: _Build, bl: Bootloader) -> None:
    _write_disk(b, bl)
    _convert(b.req.disk_type, b.partial)
    with open(b.partial, "rb+") as f:
        os.fsync(f.fileno())


def _unpack(b: _Build, ref: ImageRef, tree: Path, pulling: str, unpacking: str) -> _Tree:
    cfg = b.cfg
    with step(f"{pulling} {ref}"):
        img = fetch(ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
    with step(f"{unpacking} {ref} ({short_digest(img.digest)})"):
        unpack(img, tree)
    return _Tree(img, tree, check_bootable(tree, ref))


def _record(t: _Tree, label: str, fs: str) -> ImageState:
    return ImageState.from_tree(
        t.tree,
        source=str(t.image.ref),
        digest=t.image.digest,
        label=label,
        fs=fs,
        action="build-disk",
    )


def _state_partition(
    b: _Build,
    snaps: Snapshotter,
    system: _Tree,
    n: int,
    state: InstallState,
    record: ImageState | None = None,
) -> None:
    """Snapshot n made active, and the layer store seeded with its blobs (the first
    upgrade then pulls only the layers that changed)."""
    statedir = b.work / "state"
    record = record or _record(system, snapshot_label(n), b.cfg.snapshot_fs)
    snaps.activate(
        n, state=state, oem_dir=b.work / "oem", reason="build-disk", passive=[], image=record
    )
    with step("Seeding the layer store"):
        store = LayerStore.on(statedir)
        if b.ref.transport != "dir":  # a tree has no layers to seed
            store.add(system.image, snapshot_tag(n))
            store.release(snaps.has_layer)  # layers kept as layer images need no blob
    store_size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    size = snaps.size(n)
    cfg, part = b.cfg, b.plan.part("state")
    # Loop snapshots are whole images each; layers share theirs, and an upgrade that
    # changes every layer needs room for one more copy.
    if snaps.kind == SnapshotterKind.LOOP:
        copies = cfg.kept_snapshots(snaps.kind)
        what = f"{copies} snapshots of {size // MIB} MiB"
    else:
        copies = 2
        what = f"{size // MIB} MiB of layers, twice for an upgrade that changes them all"
    _fits(
        f"the state partition ({what} + layer store)",
        size * copies + 2 * store_size + _ext_overhead(part.size),
        part.size,
        "raise partitions.state in config, or lower max-snaps",
    )


def _recovery_partition(b: _Build, recovery: _Tree) -> ImageState:
    recdir = b.work / "recovery"
    with step("Building the recovery system"):
        used = write_recovery(recovery.tree, recovery.boot, recdir, b.cfg.recovery_fs)
    part = b.plan.part("recovery")
    _fits(
        "the recovery system",
        used + _ext_overhead(part.size),
        part.size,
        "raise partitions.recovery in config",
    )
    return _record(recovery, RECOVERY_LABEL, b.cfg.recovery_fs)


def _write_disk(b: _Build, bl: Bootloader) -> None:
    plan, partial = b.plan, b.partial
    with step(f"Partitioning a {plan.size_mib} MiB disk"):
        diskimg.create_sparse(partial, plan.size_mib * MIB)
        diskimg.partition(partial, plan)
    with step("Writing filesystems"):
        filled = ["oem", "recovery"] + ([] if b.deploy_command is not None else ["state"])
        for name in filled:
            p = plan.part(name)
            diskimg.mkfs_ext4(
                partial,
                p.fs_label(),
                size=p.size,
                offset=p.offset,
                source=b.work / name,
                zeroed=True,
            )
        if b.deploy_command is None:
            p = plan.part("persistent")
            diskimg.mkfs_ext4(partial, p.fs_label(), size=p.size, offset=p.offset, zeroed=True)
    with step("Installing GRUB (ESP and BIOS boot code)"):
        install_bootloader(partial, plan, bl, sparse=True)


def _convert(disk_type: DiskType, partial: Path) -> None:
    """The raw disk into the format asked for, under the same name."""
    if disk_type == DiskType.RAW:
        return
    if disk_type == DiskType.VHD:
        with step("Appending the fixed VHD footer"):
            formats.to_vhd(partial)
        return
    raw = partial.with_name(partial.name + ".raw")
    os.replace(partial, raw)
    try:
        if disk_type == DiskType.QCOW2:
            with step("Converting to qcow2"):
                runner.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(partial)])
        else:
            with step("Packing disk.raw into a GCE tarball"):
                formats.to_gce(raw, partial)
    finally:
        raw.unlink(missing_ok=True)
