"""cos upgrade: pull a new image and make it the next boot, atomically.

Order of writes, each durable before the next, so that a crash at any instant boots
either the old active snapshot or the complete new one:

1. blobs into the layer store (a cache: nothing refers to them yet);
2. snapshot N built in .snapshots/N (marked partial until sealed);
3. state.yaml lists N (not active);
4. grubenv: N on trial with the fallback and the new passive list;
5. the `active` link renamed to N: the switch;
6. state.yaml marks N active; snapshots beyond max-snaps and their blobs go.

Steps after 5 are cleanup: their failures are reported and never undo the switch.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cos import events
from cos import run as runner
from cos.actions.deploy import (
    check_bootable,
    image_state,
    install_bootloader,
    make_bootloader,
    require_registry,
)
from cos.actions.hooks import run_chroot_hook, run_hook, system_sources
from cos.boot import assessment
from cos.config import Config
from cos.disk.mount import mounted, writable
from cos.disk.plan import MIB, read_plan
from cos.errors import CosError, DiskError, StateError
from cos.fsutil import free_bytes
from cos.log import log, step
from cos.oci.image import unpack
from cos.oci.store import LayerStore, RemoteImage, inspect_remote, snapshot_tag
from cos.snapshot.loop import LoopSnapshotter, estimate_image_bytes, snapshot_label
from cos.system.installed import Installed
from cos.system.mounts import is_mountpoint
from cos.system.state import InstallState, write_state

REQUIRED_TOOLS = ["skopeo", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "mount"]
BOOTLOADER_TOOLS = ["sfdisk", "grub-mkimage", "mkfs.vfat", "mmd", "mcopy"]


@dataclass
class UpgradeRequest:
    system: str | None = None
    force: bool = False
    reboot: bool = False
    installed: Installed | None = None
    bootloader: bool = False


@dataclass(frozen=True)
class Plan:
    """Which snapshots stay, which go, and what the new one falls back to."""

    fallback: int | None
    keep: list[int]  # existing snapshots kept beside the new one
    drop: list[int]


def plan_snapshots(
    existing: list[int], active: int | None, booted: int | None, max_snaps: int
) -> Plan:
    """Keep the snapshot to fall back to (the one running), then the newest, up to max."""
    fallback = booted if booted in existing else active
    order = [n for n in ([fallback] if fallback is not None else [])]
    order += [n for n in sorted(existing, reverse=True) if n not in order]
    if booted in existing and booted not in order[: max_snaps - 1]:
        order.remove(booted)
        order.insert(0, booted)
    keep = order[: max(max_snaps - 1, 0)]
    if booted is not None and booted in existing and booted not in keep:
        keep.append(booted)  # never remove what is running
    return Plan(fallback, keep, [n for n in existing if n not in keep])


def _mib(n: int) -> str:
    return f"{-(-n // MIB)} MiB"


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
        if entry.get("action") == "boot-failed" and entry.get("digest") == digest:
            return str(entry.get("date", "an earlier boot"))
    for snap in state.snapshots.values():
        if snap.boot_assessment == "failed" and snap.digest == digest:
            return snap.date
    return None


def upgrade(req: UpgradeRequest, cfg: Config) -> int | None:
    """Returns the new snapshot number (None when already up to date)."""
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode(
        "upgrade",
        ("active", "passive"),
        "boot the installed system (active or passive) to upgrade it",
    )
    state = inst.state()
    snaps = LoopSnapshotter(inst.state_dir, cfg.snapshot_fs)
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
    runner.require(*REQUIRED_TOOLS, *(BOOTLOADER_TOOLS if req.bootloader else []))
    with step(f"Reading {ref}"):
        remote = inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())
    if current is not None and current.digest == remote.digest and not req.force:
        log.info("Already up to date: snapshot %s is %s (%s)", active, ref, remote.digest[:19])
        events.summary(image=str(ref), digest=remote.digest, snapshot=active, changed=False)
        return None
    failed = _failed_before(state, remote.digest)
    if failed and not req.force:
        raise StateError(
            f"{ref} ({remote.digest[:19]}) failed its trial boot on {failed};"
            " it is not installed again",
            hint="push a fixed image, or pass --force to give it one more trial",
        )

    hooks = system_sources(cfg)
    run_hook("before-upgrade", hooks)
    with writable(inst.state_dir):
        n = _build_and_switch(req, cfg, inst, state, snaps, remote, booted, hooks)
    if req.bootloader:
        _update_bootloader(inst, cfg, snaps, n, state.labels.get("efi", cfg.labels.efi))
    run_hook("after-upgrade", hooks)
    log.info("Upgraded: snapshot %d is %s (%s); it boots next", n, ref, remote.digest[:19])
    events.summary(image=str(ref), digest=remote.digest, snapshot=n, changed=True)
    if req.reboot:
        runner.run(["systemctl", "reboot"], check=False)
    return n


def _build_and_switch(
    req: UpgradeRequest,
    cfg: Config,
    inst: Installed,
    state: InstallState,
    snaps: LoopSnapshotter,
    remote: RemoteImage,
    booted: int | None,
    hooks: list[str],
) -> int:
    store = LayerStore.on(inst.state_dir)
    removed = snaps.clean_debris()
    if removed:
        log.info("Removed incomplete snapshot(s) %s left by an interrupted upgrade", removed)
    existing = snaps.numbers()
    plan = plan_snapshots(existing, snaps.active(), booted, cfg.max_snaps)
    reclaim = sum(snaps.size(n) for n in plan.drop)
    tags_before = set(store.tags())

    # Pre-flight before anything is written: blobs to pull + the new snapshot.
    missing = store.missing(remote)
    want_tar = store.estimated_tar_size(remote)
    pull_bytes = sum(s for _, s in missing)
    _check_space(
        inst.state_dir,
        pull_bytes + estimate_image_bytes(want_tar),
        reclaim,
        f"the new snapshot of {remote.ref}",
    )
    n = snaps.next_number()
    tag = snapshot_tag(n)
    try:
        with step(
            f"Pulling {remote.ref} ({len(missing)} of {len(remote.layers) + 1} blobs, "
            f"{_mib(pull_bytes)})"
        ):
            image = store.pull(remote, tag, cfg.tls_verify)
        size = estimate_image_bytes(store.unpacked_size(tag))
        if plan.drop and size > free_bytes(inst.state_dir):
            # Make room: drop old snapshots now (the menu first), keep the fallback.
            assessment.set_passive(inst.oem_dir, [k for k in plan.keep if k != snaps.active()])
            for d in plan.drop:
                if d != snaps.active():
                    snaps.delete(d)
        _check_space(inst.state_dir, size, 0, f"the new snapshot of {remote.ref}")
        with step(f"Building snapshot {n}"), snaps.start(size, inst.run_dir / "upgrade") as p:
            assert p.number == n
            with step(f"Unpacking {remote.ref} ({remote.digest[:19]})"):
                unpack(image, p.tree)
            check_bootable(p.tree, remote.ref)
            tree_state = image_state(
                str(remote.ref),
                remote.digest,
                p.tree,
                snapshot_label(n),
                cfg.snapshot_fs,
                False,
                "upgrade",
            )
            tree_state.boot_assessment = "trial"
            with step("Running the after-upgrade-chroot hook"):
                run_chroot_hook("after-upgrade-chroot", hooks, p.tree)
    except BaseException:
        _forget_pull(store, tags_before)
        raise

    with step(f"Switching to snapshot {n}"):
        state.snapshots[n] = tree_state
        write_state(inst.state_dir, state)
        assessment.start_trial(inst.oem_dir, n, plan.fallback, cfg.boot_attempts, plan.keep)
        snaps.switch(n)
        for k, s in state.snapshots.items():
            s.active = k == n
        state.record("upgrade", n, tree_state)
        write_state(inst.state_dir, state)

    _cleanup(snaps, store, state, inst, plan.drop, n)
    return n


def _update_bootloader(
    inst: Installed, cfg: Config, snaps: LoopSnapshotter, n: int, efi_label: str
) -> None:
    """GRUB (ESP + BIOS boot code) from snapshot n's own files.

    Runs after the switch: the new GRUB boots the old snapshots too. The ESP is
    rewritten in place, which is not atomic; it is only done when asked for.
    """
    disk = inst.boot_disk(efi_label)
    plan = read_plan(disk)
    work = Path(tempfile.mkdtemp(prefix="cos-bootloader-"))
    try:
        with (
            step(f"Installing GRUB from snapshot {n} on {disk}"),
            mounted(snaps.image(n), work / "tree", "loop,ro") as tree,
        ):
            boot = check_bootable(tree, f"snapshot {n}")
            bl = make_bootloader(tree, boot, cfg, work / "boot", plan.part("efi").size)
            install_bootloader(disk, plan, bl, sparse=False)
    finally:
        if not is_mountpoint(work / "tree"):
            shutil.rmtree(work, ignore_errors=True)


def _forget_pull(store: LayerStore, tags_before: set[str]) -> None:
    """An upgrade that did not switch leaves the store as it found it."""
    try:
        store.keep_only(tags_before)
    except (OSError, CosError) as exc:
        log.warning("could not remove the blobs of the failed upgrade: %s", exc)


def _cleanup(
    snaps: LoopSnapshotter,
    store: LayerStore,
    state: InstallState,
    inst: Installed,
    drop: list[int],
    new: int,
) -> None:
    """After the switch: drop snapshots beyond max-snaps. Never undoes the switch."""
    for d in drop:
        if d in snaps.numbers():
            try:
                snaps.delete(d)
            except OSError as exc:
                log.warning("could not remove snapshot %d: %s (the next upgrade retries)", d, exc)
                continue
        state.snapshots.pop(d, None)
    try:
        write_state(inst.state_dir, state)
        freed = store.keep_only({snapshot_tag(k) for k in state.snapshots})
        if freed:
            log.info("Layer store: %s of unused blobs removed", _mib(freed))
    except (OSError, CosError) as exc:
        log.warning("cleanup after switching to snapshot %d: %s", new, exc)
