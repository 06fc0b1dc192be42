"""cos upgrade: pull a new image and make it the next boot, atomically.

Order of writes, each durable before the next, so that a crash at any instant boots
either the old active snapshot or the complete new one:

1. blobs into the layer store (a cache: nothing refers to them yet);
2. snapshot N built by the snapshotter (a transaction: committed whole or not at all);
3. snapshot N activated on trial (cos.snapshot.base.Snapshotter.activate: state.yaml,
   grubenv, the `active` link, state.yaml again);
4. snapshots beyond max-snaps and their blobs go.

Step 4 is cleanup: its failures are reported and never undo the switch.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cos import events
from cos import run as runner
from cos.boot import assessment
from cos.boot.bootloader import install_bootloader, make_bootloader
from cos.cloudinit.hooks import run_chroot_hook, run_hook
from cos.cloudinit.sources import system_sources
from cos.config import Config, SnapshotterKind
from cos.disk.mount import writable
from cos.disk.mounts import is_mountpoint
from cos.disk.plan import MIB, read_plan
from cos.errors import CosError, DiskError, StateError
from cos.fsutil import ceil_div, free_bytes
from cos.log import log, step
from cos.oci.digest import short_digest
from cos.oci.reference import require_registry
from cos.oci.store import LayerStore, RemoteImage, inspect_remote, snapshot_tag
from cos.snapshot import open_snapshotter
from cos.snapshot.base import Snapshotter, Trial, snapshot_label
from cos.snapshot.retention import plan_snapshots
from cos.system.installed import Installed, Mode
from cos.system.kernel import check_bootable
from cos.system.state import Assessment, ImageState, InstallState, write_state

REQUIRED_TOOLS = ["skopeo", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "mount"]
LAYERS_TOOLS = ["mkfs.erofs"]
BOOTLOADER_TOOLS = ["sfdisk", "grub-mkimage", "mkfs.vfat", "mmd", "mcopy"]


@dataclass(frozen=True, kw_only=True)
class UpgradeRequest:
    system: str | None = None
    force: bool = False
    reboot: bool = False
    installed: Installed | None = None
    bootloader: bool = False


@dataclass(frozen=True)
class Upgrade:
    """One upgrade in progress: what it acts on and what it pulls."""

    cfg: Config
    inst: Installed
    state: InstallState
    snaps: Snapshotter
    remote: RemoteImage
    booted: int | None
    hooks: list[str]


def _mib(n: int) -> str:
    return f"{ceil_div(n, MIB)} MiB"


def _check_space(state_dir: Path, need: int, reclaim: int, what: str) -> None:
    free = free_bytes(state_dir)
    if need > free + reclaim:
        raise DiskError(
            f"the state partition cannot hold {what}: it needs {_mib(need)}, "
            f"{_mib(free)} are free"
            + (f" (+{_mib(reclaim)} from old snapshots)" if reclaim else "")
            + f"; {_mib(need - free - reclaim)} missing",
            hint="lower max-snaps, use a smaller image, or reinstall with a larger "
            "partitions.state",
        )


def _failed_before(state: InstallState, digest: str) -> str | None:
    """When this image already failed a trial boot here. Without this check an
    automated upgrader (a SUC Plan, a timer) would install it, fail, fall back and
    install it again, forever."""
    for entry in reversed(state.history):
        if entry.action == "boot-failed" and entry.digest == digest:
            return entry.date or "an earlier boot"
    for snap in state.snapshots.values():
        if snap.boot_assessment == Assessment.FAILED and snap.digest == digest:
            return snap.date
    return None


def upgrade(req: UpgradeRequest, cfg: Config) -> int | None:
    """Returns the new snapshot number (None when already up to date)."""
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode(
        "upgrade",
        (Mode.ACTIVE, Mode.PASSIVE),
        "boot the installed system (active or passive) to upgrade it",
    )
    state = inst.state()
    snaps = open_snapshotter(inst.state_dir, state, cfg.snapshot_fs, want=cfg.snapshotter)
    migrating = snaps.kind != state.snapshotter.type
    assessment.check_env(inst.oem_dir)
    active = snaps.active()
    booted = inst.booted_snapshot()
    current = state.snapshots.get(active) if active is not None else None
    source = req.system or cfg.upgrade_system or (current.source if current else "")
    if not source:
        raise StateError(
            "no upgrade source: none given and none recorded for the active snapshot",
            hint="pass --system REF (or set upgrade-system in /etc/cos/config.yaml)",
        )
    ref = require_registry(
        source, "upgrade", "push the image to a registry and pass --system HOST/REPO:TAG"
    )
    runner.require(
        *REQUIRED_TOOLS,
        *(LAYERS_TOOLS if snaps.kind == SnapshotterKind.LAYERS else []),
        *(BOOTLOADER_TOOLS if req.bootloader or migrating else []),
    )
    with step(f"Reading {ref}"):
        remote = inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())
    if current is not None and current.digest == remote.digest and not req.force:
        log.info(
            "Already up to date: snapshot %s is %s (%s)", active, ref, short_digest(remote.digest)
        )
        events.summary(image=str(ref), digest=remote.digest, snapshot=active, changed=False)
        return None
    failed = _failed_before(state, remote.digest)
    if failed and not req.force:
        raise StateError(
            f"{ref} ({short_digest(remote.digest)}) failed its trial boot on {failed};"
            " it is not installed again",
            hint="push a fixed image, or pass --force to give it one more trial",
        )

    up = Upgrade(cfg, inst, state, snaps, remote, booted, system_sources(cfg))
    run_hook("before-upgrade", up.hooks)
    with writable(inst.state_dir):
        n = _build_and_switch(up)
    if req.bootloader and not migrating:
        _update_bootloader(up, n)
    run_hook("after-upgrade", up.hooks)
    log.info("Upgraded: snapshot %d is %s (%s); it boots next", n, ref, short_digest(remote.digest))
    events.summary(image=str(ref), digest=remote.digest, snapshot=n, changed=True)
    if req.reboot:
        runner.run(["systemctl", "reboot"], check=False)
    return n


def _build_and_switch(up: Upgrade) -> int:
    cfg, inst, snaps, remote = up.cfg, up.inst, up.snaps, up.remote
    store = LayerStore.on(inst.state_dir)
    removed = snaps.clean_debris()
    if removed:
        log.info("Removed incomplete snapshot(s) %s left by an interrupted upgrade", removed)
    plan = plan_snapshots(
        snaps.numbers(), snaps.active(), up.booted, cfg.kept_snapshots(snaps.kind)
    )
    reclaim = sum(snaps.size(n) for n in plan.drop)
    tags_before = set(store.tags())

    # Pre-flight before anything is written: blobs to pull + the new snapshot.
    missing = store.missing(remote)
    pull_bytes = sum(s for _, s in missing)
    what = f"the new snapshot of {remote.ref}"
    _check_space(
        inst.state_dir, pull_bytes + snaps.estimate(store.estimated_tar_size(remote)), reclaim, what
    )
    n = snaps.next_number()
    try:
        with step(
            f"Pulling {remote.ref} ({len(missing)} of {len(remote.layers) + 1} blobs, "
            f"{_mib(pull_bytes)})"
        ):
            image = store.pull(remote, snapshot_tag(n), cfg.tls_verify)
        size = snaps.estimate(store.unpacked_size(snapshot_tag(n)))
        if plan.drop and size > free_bytes(inst.state_dir):
            # Make room: drop old snapshots now (the menu first), keep the fallback.
            assessment.set_passive(inst.oem_dir, [k for k in plan.keep if k != snaps.active()])
            for d in plan.drop:
                if d != snaps.active():
                    snaps.delete(d)
        _check_space(inst.state_dir, size, 0, what)
        with (
            step(f"Building snapshot {n}"),
            snaps.start(image, size, inst.run_dir / "upgrade") as p,
        ):
            if p.number != n:
                raise StateError(f"snapshot {n} was taken while this upgrade ran")
            check_bootable(p.tree, remote.ref)
            record = ImageState.from_tree(
                p.tree,
                source=str(remote.ref),
                digest=remote.digest,
                label=snapshot_label(n),
                fs=cfg.snapshot_fs,
                action="upgrade",
            )
            record.boot_assessment = Assessment.TRIAL
            with step("Running the after-upgrade-chroot hook"):
                run_chroot_hook("after-upgrade-chroot", up.hooks, p.tree)
    except BaseException:
        _forget_pull(store, tags_before)
        raise

    if snaps.kind != up.state.snapshotter.type:
        # The GRUB menu on the ESP predates this backend: it must boot the new snapshot
        # (and keeps booting the old ones) before the switch points at it.
        log.info("Moving to %s snapshots: GRUB is updated first", snaps.kind)
        _update_bootloader(up, n)
        up.state.snapshotter.type = snaps.kind
    try:
        with step(f"Switching to snapshot {n}"):
            snaps.activate(
                n,
                state=up.state,
                oem_dir=inst.oem_dir,
                reason="upgrade",
                passive=plan.keep,
                image=record,
                trial=Trial(fallback=plan.fallback, attempts=cfg.boot_attempts),
            )
    except BaseException:
        if snaps.active() != n:
            _abandon(up, n, store, tags_before)
        raise
    _cleanup(up, store, plan.drop, n)
    return n


def _update_bootloader(up: Upgrade, n: int) -> None:
    """GRUB (ESP + BIOS boot code) from snapshot n's own files.

    Runs after the switch: the new GRUB boots the old snapshots too. The ESP is
    rewritten in place, which is not atomic; it is only done when asked for.
    """
    disk = up.inst.boot_disk(up.state.labels.get("efi", up.cfg.labels.efi))
    plan = read_plan(disk)
    work = Path(tempfile.mkdtemp(prefix="cos-bootloader-"))
    try:
        with (
            step(f"Installing GRUB from snapshot {n} on {disk}"),
            up.snaps.mounted(n, work / "tree") as tree,
        ):
            boot = check_bootable(tree, f"snapshot {n}")
            bl = make_bootloader(tree, boot, up.cfg, work / "boot", plan.part("efi").size)
            install_bootloader(disk, plan, bl, sparse=False)
    finally:
        if not is_mountpoint(work / "tree"):
            shutil.rmtree(work, ignore_errors=True)


def _abandon(up: Upgrade, n: int, store: LayerStore, tags_before: set[str]) -> None:
    """A switch that failed before the link moved takes its snapshot out again: a
    snapshot that never booted must not stay behind for a later rollback to pick."""
    try:
        up.snaps.delete(n)
        if up.state.snapshots.pop(n, None) is not None:
            write_state(up.inst.state_dir, up.state)
        oem = up.inst.oem_dir
        trial = assessment.read_trial(oem)
        if trial is not None and trial.snapshot == n:
            others = [k for k in up.snaps.numbers() if k != up.snaps.active()]
            assessment.end_trial(oem, others)
    except (OSError, CosError) as exc:
        log.warning("could not remove snapshot %d of the failed switch: %s", n, exc)
    _forget_pull(store, tags_before)


def _forget_pull(store: LayerStore, tags_before: set[str]) -> None:
    """An upgrade that did not switch leaves the store as it found it."""
    try:
        store.keep_only(tags_before)
    except (OSError, CosError) as exc:
        log.warning("could not remove the blobs of the failed upgrade: %s", exc)


def _cleanup(up: Upgrade, store: LayerStore, drop: list[int], new: int) -> None:
    """After the switch: drop snapshots beyond max-snaps. Never undoes the switch."""
    snaps, state = up.snaps, up.state
    for d in drop:
        if d in snaps.numbers():
            try:
                snaps.delete(d)
            except OSError as exc:
                log.warning("could not remove snapshot %d: %s (the next upgrade retries)", d, exc)
                continue
        state.snapshots.pop(d, None)
    try:
        write_state(up.inst.state_dir, state)
        freed = store.keep_only({snapshot_tag(k) for k in state.snapshots})
        if freed:
            log.info("Layer store: %s of unused blobs removed", _mib(freed))
    except (OSError, CosError) as exc:
        log.warning("cleanup after switching to snapshot %d: %s", new, exc)
