"""cos upgrade: pull a new image and make it the next boot, atomically.

Order of writes, each durable before the next, so that a crash at any instant boots
either the old active snapshot or the complete new one:

1. blobs into the layer store (a cache: nothing refers to them yet);
2. snapshot N built by the snapshotter (a transaction: committed whole or not at all);
3. snapshot N activated on trial (cos.snapshot.base.Snapshotter.activate: state.yaml,
   grubenv, the `active` link, state.yaml again);
4. snapshots beyond max-snaps and their blobs go.

Step 4 is cleanup: its failures are reported and never undo the switch.

In a maintenance window the upgrade comes in two parts. `--download-only` does 1 and
2 and stops: the snapshot is staged (state.yaml's `staged` record, written before
the build starts and completed after it; no menu offers it). `--apply` does 3 and 4
with it, after checking that the registry still serves the digest that was staged.
The hooks follow the work: `before-upgrade` and `after-upgrade-chroot` run with the
build, `after-upgrade` with the switch. `--check` reads the manifest and writes
nothing. A full upgrade or a new `--download-only` drops what was staged first.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
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
from cos.oci.reference import ImageRef, require_registry
from cos.oci.store import (
    SPOOL_DIR,
    LayerStore,
    RemoteImage,
    inspect_remote,
    snapshot_tag,
    spool_for,
)
from cos.snapshot import BACKENDS, open_snapshotter
from cos.snapshot.base import Snapshotter, Trial, snapshot_label
from cos.snapshot.retention import Plan, plan_snapshots
from cos.system.installed import Installed, Mode
from cos.system.kernel import check_bootable
from cos.system.state import Assessment, ImageState, InstallState, Staged, now, write_state

REQUIRED_TOOLS = ["skopeo", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "mount"]
BOOTLOADER_TOOLS = ["sfdisk", "grub-mkimage", "mkfs.vfat", "mmd", "mcopy"]


@dataclass(frozen=True, kw_only=True)
class UpgradeRequest:
    system: str | None = None
    force: bool = False
    reboot: bool = False
    installed: Installed | None = None
    bootloader: bool = False
    download_only: bool = False  # build the next snapshot staged, do not switch
    offline: bool = False  # apply without asking the registry for the digest


@dataclass(frozen=True)
class Upgrade:
    """One upgrade in progress: what it acts on."""

    cfg: Config
    inst: Installed
    state: InstallState
    snaps: Snapshotter
    booted: int | None
    hooks: list[str]


@dataclass(frozen=True)
class Built:
    """A complete snapshot and what its switch needs."""

    number: int
    record: ImageState
    plan: Plan
    store: LayerStore
    tags_before: set[str]


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


def _open(req: UpgradeRequest, cfg: Config, *, move: bool) -> Upgrade:
    """The installation; with move, in the backend the config wants when that one can
    take it over (a build); else in the recorded one."""
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode(
        "upgrade",
        (Mode.ACTIVE, Mode.PASSIVE),
        "boot the installed system (active or passive) to upgrade it",
    )
    state = inst.state()
    snaps = open_snapshotter(inst.state_dir, state, cfg.snapshot_fs, want=_wanted(cfg, move))
    assessment.check_env(inst.oem_dir)
    return Upgrade(cfg, inst, state, snaps, inst.booted_snapshot(), system_sources(cfg))


def _wanted(cfg: Config, move: bool) -> SnapshotterKind | None:
    """The backend this upgrade may move the installation to. A system without the
    tools to write layer images (an image built before they were in the base) keeps
    its backend: its upgrades go on working, and the move waits for an image that
    has them."""
    if not move:
        return None
    missing = [t for t in BACKENDS[cfg.snapshotter].tools if runner.which(t) is None]
    if missing:
        log.info(
            "Keeping the recorded snapshotter: %s snapshots need %s, not on this system",
            cfg.snapshotter,
            ", ".join(missing),
        )
        return None
    return cfg.snapshotter


def _current(up: Upgrade) -> ImageState | None:
    active = up.snaps.active()
    return up.state.snapshots.get(active) if active is not None else None


def _source(req: UpgradeRequest, cfg: Config, current: ImageState | None) -> ImageRef:
    source = req.system or cfg.upgrade_system or (current.source if current else "")
    if not source:
        raise StateError(
            "no upgrade source: none given and none recorded for the active snapshot",
            hint="pass --system REF (or set upgrade-system in /etc/cos/config.yaml)",
        )
    return require_registry(
        source, "upgrade", "push the image to a registry and pass --system HOST/REPO:TAG"
    )


def _read(ref: ImageRef, cfg: Config) -> RemoteImage:
    with step(f"Reading {ref}"):
        return inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())


def upgrade(req: UpgradeRequest, cfg: Config) -> int | None:
    """Returns the new snapshot number, switched to or (download_only) staged; None
    when already up to date."""
    up = _open(req, cfg, move=True)
    state, snaps = up.state, up.snaps
    migrating = snaps.kind != state.snapshotter.type
    if migrating and req.download_only:
        raise StateError(
            f"the installation moves to {snaps.kind} snapshots with its next upgrade,"
            " which is not staged",
            hint="run a full `cos upgrade` for this move (GRUB is updated with its switch)",
        )
    active = snaps.active()
    current = _current(up)
    ref = _source(req, cfg, current)
    runner.require(
        *REQUIRED_TOOLS,
        *snaps.tools,
        *(BOOTLOADER_TOOLS if req.bootloader or migrating else []),
    )
    remote = _read(ref, cfg)
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
    if req.download_only:
        return _download(req, up, remote)

    run_hook("before-upgrade", up.hooks)
    with writable(up.inst.state_dir):
        n = _build_and_switch(up, remote)
    return _switched(req, up, n, ref, remote.digest, req.bootloader and not migrating)


def _switched(
    req: UpgradeRequest, up: Upgrade, n: int, ref: ImageRef, digest: str, bootloader: bool
) -> int:
    """After the switch: GRUB when asked, the after-upgrade hook, the reboot."""
    if bootloader:
        _update_bootloader(up, n)
    run_hook("after-upgrade", up.hooks)
    log.info("Upgraded: snapshot %d is %s (%s); it boots next", n, ref, short_digest(digest))
    events.summary(image=str(ref), digest=digest, snapshot=n, changed=True)
    if req.reboot:
        runner.run(["systemctl", "reboot"], check=False)
    return n


def check(req: UpgradeRequest, cfg: Config) -> bool:
    """--check: whether the source has an image an upgrade would install. Reads the
    manifest (its signature too, when one is required) and writes nothing."""
    up = _open(req, cfg, move=False)
    current = _current(up)
    ref = _source(req, cfg, current)
    remote = _read(ref, cfg)
    digest, short = remote.digest, short_digest(remote.digest)
    failed = _failed_before(up.state, digest)
    staged = up.snaps.staged(up.state)
    is_staged = staged is not None and staged.image.digest == digest
    if current is not None and current.digest == digest:
        log.info("Up to date: the active snapshot is %s (%s)", ref, short)
    elif failed and not req.force:
        log.info("No update: %s (%s) failed its trial boot on %s", ref, short, failed)
    else:
        where = f"; staged as snapshot {staged.snapshot}" if staged and is_staged else ""
        log.info("Update available: %s (%s)%s", ref, short, where)
        events.summary(
            image=str(ref),
            digest=digest,
            available=True,
            staged=is_staged,
            snapshot=staged.snapshot if staged and is_staged else None,
        )
        return True
    events.summary(image=str(ref), digest=digest, available=False)
    return False


def apply(req: UpgradeRequest, cfg: Config) -> int:
    """--apply: switch to the staged snapshot, on trial, as an upgrade switches."""
    up = _open(req, cfg, move=False)
    staged = up.snaps.staged(up.state)
    if staged is None:
        raise StateError(
            "no snapshot is staged",
            hint="`cos upgrade --download-only` builds one; `cos status` shows what is staged",
        )
    n, image = staged.snapshot, staged.image
    ref = require_registry(image.source, "upgrade", "stage it again with --download-only")
    runner.require(*(BOOTLOADER_TOOLS if req.bootloader else []))
    if not req.offline:
        remote = _read(ref, cfg)
        if remote.digest != image.digest and not req.force:
            raise StateError(
                f"{ref} is {short_digest(remote.digest)} now, snapshot {n} was staged from"
                f" {short_digest(image.digest)}",
                hint="stage the new image with --download-only, or pass --force (or"
                " --offline) to apply the staged one",
            )
    keep = cfg.kept_snapshots(up.snaps.kind)
    plan = plan_snapshots(up.snaps.bootable(up.state), up.snaps.active(), up.booted, keep)
    store = LayerStore.on(up.inst.state_dir)
    with writable(up.inst.state_dir):
        _switch(up, Built(n, replace(image), plan, store, set(store.tags())))
    return _switched(req, up, n, ref, image.digest, req.bootloader)


def _download(req: UpgradeRequest, up: Upgrade, remote: RemoteImage) -> int:
    """--download-only: the next snapshot, built and staged."""
    ref, digest = remote.ref, remote.digest
    staged = up.snaps.staged(up.state)
    if staged is not None and staged.image.digest == digest and not req.force:
        n = staged.snapshot
        log.info("Already staged: snapshot %d is %s (%s)", n, ref, short_digest(digest))
        events.summary(image=str(ref), digest=digest, snapshot=n, staged=True, changed=False)
        return n
    run_hook("before-upgrade", up.hooks)
    with writable(up.inst.state_dir):
        n = _build(up, remote, stage=True).number
    log.info(
        "Staged: snapshot %d is %s (%s); `cos upgrade --apply` switches to it",
        n,
        ref,
        short_digest(digest),
    )
    events.summary(image=str(ref), digest=digest, snapshot=n, staged=True, changed=True)
    return n


def _build_and_switch(up: Upgrade, remote: RemoteImage) -> int:
    built = _build(up, remote, stage=False)
    _switch(up, built)
    return built.number


def _build(up: Upgrade, remote: RemoteImage, *, stage: bool) -> Built:
    """Pull and build the next snapshot; with stage, record it as staged."""
    cfg, inst, snaps = up.cfg, up.inst, up.snaps
    store = LayerStore.on(inst.state_dir)
    removed = snaps.clean_debris()
    if removed:
        log.info("Removed incomplete snapshot(s) %s left by an interrupted upgrade", removed)
    keep = cfg.kept_snapshots(snaps.kind)
    plan = plan_snapshots(snaps.bootable(up.state), snaps.active(), up.booted, keep)
    staged = snaps.staged(up.state)
    reclaim = sum(snaps.size(n) for n in plan.drop) + (snaps.size(staged.snapshot) if staged else 0)
    tags_before = set(store.tags())

    # Pre-flight before anything is written: blobs to pull + what the new snapshot
    # writes. Layers the snapshotter holds intact travel no more.
    ids = remote.layer_ids()
    intact = snaps.intact_layers([i for _, i in ids])
    held = {d for d, i in ids if i in intact}
    missing = store.missing(remote, held)
    pull_bytes = sum(s for _, s in missing)
    # A layers snapshot keeps no blob: new layers are fetched into RAM when they fit.
    layer_bytes = sum(s for d, s in missing if d != remote.config[0])
    spool = spool_for(inst.run_dir, layer_bytes) if snaps.kind == SnapshotterKind.LAYERS else None
    if spool is not None:
        log.info(
            "The new layers (%s) are fetched into RAM: their layer images are the"
            " device's only copy",
            _mib(layer_bytes),
        )
        store = LayerStore.on(inst.state_dir, spool)
    what = f"the new snapshot of {remote.ref}"
    sizes = store.estimated_tar_sizes(remote)
    new_bytes = snaps.new_bytes([(i, t) for (_, i), t in zip(ids, sizes, strict=True)])
    written = pull_bytes - (layer_bytes if spool is not None else 0)
    _check_space(inst.state_dir, written + new_bytes, reclaim, what)
    _drop_staged(up)
    n = snaps.next_number()
    try:
        with step(
            f"Pulling {remote.ref} ({len(missing)} of {len(remote.layers) + 1} blobs, "
            f"{_mib(pull_bytes)})"
        ):
            image = store.pull(remote, snapshot_tag(n), cfg.tls_verify, held=held)
        sizes = [store.tar_size(d) if store.has(d) else 0 for d, _ in remote.layers]
        size = snaps.new_bytes([(i, t) for (_, i), t in zip(ids, sizes, strict=True)])
        if plan.drop and size > free_bytes(inst.state_dir):
            # Make room: drop old snapshots now (the menu first), keep the fallback.
            assessment.set_passive(inst.oem_dir, [k for k in plan.keep if k != snaps.active()])
            for d in plan.drop:
                if d != snaps.active():
                    snaps.delete(d)
        _check_space(inst.state_dir, size, 0, what)
        if stage:  # recorded before the snapshot exists: a complete one is never unrecorded
            _set_staged(up, Staged(n, _record(remote, n, cfg, None)))
        with (
            step(f"Building snapshot {n}"),
            snaps.start(image, size, inst.run_dir / "upgrade") as p,
        ):
            if p.number != n:
                raise StateError(f"snapshot {n} was taken while this upgrade ran")
            check_bootable(p.tree, remote.ref)
            record = _record(remote, n, cfg, p.tree)
            with step("Running the after-upgrade-chroot hook"):
                run_chroot_hook("after-upgrade-chroot", up.hooks, p.tree)
    except BaseException:
        if stage:
            _set_staged(up, None)
        _forget_pull(store, tags_before)
        raise
    finally:  # the layer images are the device's copy now (or a killed run's leftovers)
        shutil.rmtree(inst.run_dir / SPOOL_DIR, ignore_errors=True)
    if stage:
        up.state.record("stage", n, record)
        _set_staged(up, Staged(n, record))
    return Built(n, record, plan, store, tags_before)


def _record(remote: RemoteImage, n: int, cfg: Config, tree: Path | None) -> ImageState:
    """state.yaml's record of snapshot n; its os-release is read from tree once built."""
    source, digest, label = str(remote.ref), remote.digest, snapshot_label(n)
    if tree is None:
        return ImageState(source, digest, label, str(cfg.snapshot_fs), now(), "upgrade")
    return ImageState.from_tree(
        tree, source=source, digest=digest, label=label, fs=cfg.snapshot_fs, action="upgrade"
    )


def _switch(up: Upgrade, built: Built) -> None:
    """Make the built snapshot boot next, on trial; then drop what the plan drops."""
    snaps, n = up.snaps, built.number
    built.record.boot_assessment = Assessment.TRIAL
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
                oem_dir=up.inst.oem_dir,
                reason="upgrade",
                passive=built.plan.keep,
                image=built.record,
                trial=Trial(fallback=built.plan.fallback, attempts=up.cfg.boot_attempts),
            )
    except BaseException:
        if snaps.active() != n:
            _abandon(up, n, built.store, built.tags_before)
        raise
    _cleanup(up, built.store, built.plan.drop, n)


def _set_staged(up: Upgrade, staged: Staged | None) -> None:
    up.state.staged = staged
    write_state(up.inst.state_dir, up.state)


def _drop_staged(up: Upgrade) -> None:
    """What was staged goes before anything else is built: the snapshot first, then its
    record, so no complete snapshot is ever left without one. A record whose snapshot is
    gone already goes too: it must not name the next build."""
    staged, state = up.state.staged, up.state
    if staged is None:
        return
    n = staged.snapshot
    if n in up.snaps.numbers() and n != up.snaps.active():
        log.info("Dropping the staged snapshot %d (%s)", n, staged.image.source)
        up.snaps.delete(n)
        state.snapshots.pop(n, None)  # listed by a switch to it that was cut short
    _set_staged(up, None)


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
    snapshot that never booted must not stay behind for a later rollback to pick. A
    staged one stays staged (no menu offers it): --apply can run again."""
    try:
        staged = up.state.staged
        if staged is None or staged.snapshot != n:
            up.snaps.delete(n)
        if up.state.snapshots.pop(n, None) is not None:
            write_state(up.inst.state_dir, up.state)
        oem = up.inst.oem_dir
        trial = assessment.read_trial(oem)
        if trial is not None and trial.snapshot == n:
            others = [k for k in up.snaps.bootable(up.state) if k != up.snaps.active()]
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
        freed = store.keep_only({snapshot_tag(k) for k in state.held()})
        freed += store.release(snaps.has_layer)
        if freed:
            log.info("Layer store: %s of unused blobs removed", _mib(freed))
    except (OSError, CosError) as exc:
        log.warning("cleanup after switching to snapshot %d: %s", new, exc)
