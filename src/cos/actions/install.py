"""cos install: put an image onto a block device, from a live or recovery system.

The result is the disk build-disk makes, but built in place: the device is
partitioned, the filesystems are made at the partitions' offsets, and the image is
pulled into the layer store on the new COS_STATE and unpacked straight into
snapshot 1, so a live system needs no scratch space for the tree. Partitions are
reached through offsets (mount -o offset=), never through partition device nodes,
so the same code runs with or without udev.

Everything is checked before the first write: the device (a block device, not in
use, large enough, no installation on it unless --force), the image (readable), the
cloud-init files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from cos import events
from cos import run as runner
from cos.boot.bootloader import DISK_TOOLS, check_grub_env_fits, install_bootloader, make_bootloader
from cos.boot.oem import write_oem
from cos.boot.recovery import RECOVERY_LABEL, write_recovery
from cos.cloudinit.hooks import run_chroot_hook, run_hook
from cos.cloudinit.loader import LoadResult, load_source
from cos.cloudinit.sources import check_cloud_init, default_sources, kernel_cmdline, system_sources
from cos.config import Config
from cos.disk import image as diskimg
from cos.disk.mount import mounted
from cos.disk.mounts import mount_table
from cos.disk.plan import MIB, DiskPlan, PartSpec, plan_disk
from cos.errors import DiskError, StateError, UsageError
from cos.log import log, step
from cos.oci.image import LocalImage, unpack
from cos.oci.reference import ImageRef, parse_ref
from cos.oci.store import LayerStore, fetch, inspect_remote, snapshot_tag
from cos.snapshot import new_snapshotter
from cos.snapshot.base import snapshot_label
from cos.snapshot.loop import estimate_image_bytes, scratch_tree
from cos.system.kernel import check_bootable
from cos.system.state import ImageState, InstallState, write_state

# build-disk's tools, plus what acting on a device takes.
REQUIRED_TOOLS = [*DISK_TOOLS, "blockdev", "e2fsck", "resize2fs", "mount"]
COS_PARTLABELS = {"state", "recovery", "oem", "persistent"}


@dataclass(frozen=True, kw_only=True)
class InstallRequest:
    device: Path
    system: str | None  # None: the image the live media carry
    cloud_init: list[Path] = field(default_factory=list)
    recovery_system: str | None = None
    force: bool = False
    after: str | None = None  # "reboot" or "poweroff"


def _check_device(dev: Path, force: bool, cfg: Config) -> DiskPlan:
    try:
        st = os.stat(dev)
    except OSError as exc:
        raise DiskError(
            f"device {dev}: {exc.strerror}", hint="give a disk such as /dev/vdb"
        ) from exc
    if not stat.S_ISBLK(st.st_mode):
        raise DiskError(
            f"{dev} is not a block device",
            hint="install writes to a disk; to make a disk image file use cos build-disk",
        )
    real = os.path.realpath(dev)
    busy = sorted(
        mnt
        for src, mnt in mount_table()
        if src == real or (src.startswith(real) and src[len(real) :].lstrip("p").isdigit())
    )
    if busy:
        raise DiskError(
            f"{dev} is in use (mounted at {', '.join(busy)})",
            hint="install onto a disk the running system does not use",
        )
    size = diskimg.device_size(real)
    try:
        plan = plan_disk(cfg.partitions, cfg.labels, size // MIB)
    except DiskError as exc:
        raise DiskError(
            f"{dev} is too small ({size // MIB} MiB): {exc.message}",
            hint="use a larger disk or smaller partitions (partitions.* in config)",
        ) from exc
    if not force:
        out = runner.run(["sgdisk", "--print", real], check=False).stdout
        names = {ln.split()[-1] for ln in out.splitlines() if ln.strip()[:1].isdigit()}
        if names >= COS_PARTLABELS:
            raise DiskError(
                f"{dev} already holds a cos installation",
                hint="pass --force to overwrite it (everything on it is lost)",
            )
    return plan


# How an image gets into a layer store once the device is ready (pull or copy).
Getter = Callable[[LayerStore, str], LocalImage]


@dataclass(frozen=True)
class _Install:
    """One install in progress: everything checked before the first write."""

    req: InstallRequest
    cfg: Config
    dev: Path
    plan: DiskPlan
    ref: ImageRef
    get: Getter
    recovery: tuple[ImageRef, Getter] | None  # None: recovery from the system image
    hooks: list[str]
    work: Path


def _source(ref: ImageRef, cfg: Config) -> Getter:
    """Check the image is reachable now; return how to put it into a store later."""
    if ref.transport == "docker":
        remote = inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())
        return lambda store, tag: store.pull(remote, tag, cfg.tls_verify)
    local = fetch(
        ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch()
    )  # oci: layouts (live media)

    def add(store: LayerStore, tag: str) -> LocalImage:
        store.add(local, tag)
        return store.image(ref, tag)

    return add


def _mount_part(stack: ExitStack, dev: Path, part: PartSpec, where: Path) -> Path:
    return stack.enter_context(
        mounted(dev, where, f"loop,offset={part.offset},sizelimit={part.size}")
    )


def install(req: InstallRequest, cfg: Config) -> None:
    runner.require(*REQUIRED_TOOLS)
    dev = Path(os.path.realpath(req.device))
    plan = _check_device(req.device, req.force, cfg)
    check_cloud_init(req.cloud_init)
    check_grub_env_fits(cfg)
    ref = parse_ref(req.system or _live_image())
    rec_ref = parse_ref(req.recovery_system) if req.recovery_system else None
    with step(f"Checking {ref}"):
        get = _source(ref, cfg)
        recovery = (rec_ref, _source(rec_ref, cfg)) if rec_ref else None

    hooks = system_sources(cfg) + [str(f) for f in req.cloud_init]
    run_hook("before-install", hooks)
    with step(f"Partitioning {dev} ({plan.size_mib} MiB)"):
        runner.run(["sgdisk", "--zap-all", str(dev)], check=False)
        diskimg.partition(dev, plan)
        runner.run(["blockdev", "--rereadpt", str(dev)], check=False)
    with step("Making filesystems"):
        for name in ("oem", "recovery", "state", "persistent"):
            p = plan.part(name)
            diskimg.mkfs_ext4(dev, p.fs_label(), size=p.size, offset=p.offset)

    work = Path(tempfile.mkdtemp(prefix="cos-install-"))
    try:
        _deploy(_Install(req, cfg, dev, plan, ref, get, recovery, hooks, work))
    finally:
        _remove_workdir(work)
    os.sync()
    run_hook("after-install", hooks)
    log.info("Installed %s on %s", ref, dev)
    events.summary(image=str(ref), device=str(dev))
    if req.after:
        runner.run(["systemctl", req.after], check=False)


# Where the cos initrd mounted the boot medium, and what build-iso put on it.
LIVE_MEDIUM = Path("/run/cos/state")
LIVE_IMAGE = "image"
LIVE_TAG = "live"


def _live_image() -> str:
    """The image a live system was booted from: the OCI layout on its medium."""
    layout = LIVE_MEDIUM / LIVE_IMAGE
    if not Path("/run/cos/live_mode").exists() or not (layout / "index.json").is_file():
        raise UsageError(
            "no --system given and this is not a live system carrying an image",
            hint="pass --system REF (a registry reference or oci:DIR[:tag])",
        )
    return f"oci:{layout}:{LIVE_TAG}"


def _remove_workdir(work: Path) -> None:
    """Remove the scratch dir, but never through a mount that failed to go away."""
    left = [mnt for _, mnt in mount_table() if mnt == str(work) or mnt.startswith(f"{work}/")]
    if left:
        log.warning("still mounted, left in place: %s", ", ".join(left))
        return
    shutil.rmtree(work, ignore_errors=True)


def _deploy(run: _Install) -> None:
    cfg, plan, work = run.cfg, run.plan, run.work
    with ExitStack() as stack:
        state_dir = _mount_part(stack, run.dev, plan.part("state"), work / "state")
        rec_dir = _mount_part(stack, run.dev, plan.part("recovery"), work / "recovery")
        oem_dir = _mount_part(stack, run.dev, plan.part("oem"), work / "oem")
        store = LayerStore.on(state_dir)
        snaps = new_snapshotter(state_dir, cfg.snapshot_fs, cfg.snapshotter)
        with step(f"Pulling {run.ref}"):
            image = run.get(store, snapshot_tag(1))
        events.summary(digest=image.digest, snapshot=1)
        size = snaps.estimate(store.unpacked_size(snapshot_tag(1)))
        with step("Building snapshot 1"), snaps.start(image, size, work / "snap") as p:
            boot = check_bootable(p.tree, run.ref)
            with step("Running the after-install-chroot hook"):
                run_chroot_hook("after-install-chroot", run.hooks, p.tree)
            snapshot = _record(p.tree, run.ref, image.digest, snapshot_label(1), cfg.snapshot_fs)
            bl = make_bootloader(p.tree, boot, cfg, work / "boot", plan.part("efi").size)
            if run.recovery is None:
                with step("Building the recovery system"):
                    write_recovery(p.tree, boot, rec_dir, cfg.recovery_fs)
                recovery = _record(p.tree, run.ref, image.digest, RECOVERY_LABEL, cfg.recovery_fs)
        if run.recovery is not None:
            recovery = _recovery_from(run, *run.recovery, store, rec_dir)
        write_oem(oem_dir, run.req.cloud_init)
        state = InstallState.new(cfg, recovery=recovery)
        snaps.activate(
            1, state=state, oem_dir=oem_dir, reason="install", passive=[], image=snapshot
        )
        store.release(snaps.has_layer)
        write_state(rec_dir, state)
        with step("Installing GRUB (ESP and BIOS boot code)"):
            install_bootloader(run.dev, plan, bl, sparse=False)


def _record(tree: Path, ref: ImageRef, digest: str, label: str, fs: str) -> ImageState:
    return ImageState.from_tree(
        tree, source=str(ref), digest=digest, label=label, fs=fs, action="install"
    )


def _recovery_from(
    run: _Install, ref: ImageRef, get: Getter, store: LayerStore, rec_dir: Path
) -> ImageState:
    """A recovery system from another image: unpacked in a scratch image on COS_RECOVERY."""
    tag = "recovery-install"
    with step(f"Pulling recovery image {ref}"):
        image = get(store, tag)
    try:
        with (
            step("Building the recovery system"),
            scratch_tree(
                rec_dir / ".scratch",
                estimate_image_bytes(store.unpacked_size(tag)),
                run.work / "rec",
            ) as tree,
        ):
            unpack(image, tree)
            boot = check_bootable(tree, ref)
            write_recovery(tree, boot, rec_dir, run.cfg.recovery_fs)
            return _record(tree, ref, image.digest, RECOVERY_LABEL, run.cfg.recovery_fs)
    finally:
        store.keep_only({snapshot_tag(1)})


def install_request_from_cloud_config(cfg: Config) -> tuple[InstallRequest, bool | None] | None:
    """The last `install:` section with `auto: true` among the cloud-configs a live
    system sees (the media's --cloud-init files, cos.setup= sources, config paths);
    None when none asks for an install. As with Kairos, a section without `auto: true`
    (a device alone, or installer settings) never wipes a disk."""
    loaded = LoadResult()
    for src in default_sources(cfg, Path("/"), kernel_cmdline()):
        loaded.extend(load_source(src))
    for err in loaded.errors:
        log.error("cloud-config: %s", err)
    with_section = [d for d in loaded.documents if d.install]
    found = [d for d in with_section if d.install and d.install.get("auto") is True]
    if not found:
        if with_section:
            log.info(
                "%s: install: section without `auto: true`; not installing",
                with_section[-1].source,
            )
        return None
    spec = found[-1].install or {}
    if not spec.get("device"):
        raise UsageError(
            f"{found[-1].source}: the install: section names no device",
            hint="add install.device, e.g. /dev/vda",
        )
    after = "poweroff" if spec.get("poweroff") else ("reboot" if spec.get("reboot") else None)
    req = InstallRequest(
        device=Path(str(spec["device"])),
        system=spec.get("system"),
        cloud_init=[Path(str(p)) for p in spec.get("cloud-init") or []],
        recovery_system=spec.get("recovery-system"),
        force=bool(spec.get("force", False)),
        after=after,
    )
    return req, spec.get("tls-verify")


def auto_install(cfg: Config) -> bool:
    """Run the install a live system's cloud-config asks for; False when none does."""
    if not Path("/run/cos/live_mode").exists():
        raise StateError(
            "unattended installs run from live media only",
            hint="boot the ISO, or run `cos install DEVICE` by hand",
        )
    found = install_request_from_cloud_config(cfg)
    if found is None:
        log.info("No install: section in the cloud-config; nothing to do")
        events.summary(installed=False)
        return False
    req, tls = found
    if tls is not None:
        cfg = dataclasses.replace(cfg, tls_verify=bool(tls))
    log.info("Unattended install onto %s", req.device)
    install(req, cfg)
    events.summary(installed=True)
    return True
