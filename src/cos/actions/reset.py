"""cos reset: from recovery mode, redeploy the state partition as fresh as an install.

The system comes from the recovery image itself (the tree recovery booted from) or,
with --system, from a registry. COS_STATE is formatted and gets snapshot 1, a new
state.yaml and an empty boot menu; persistent data and OEM configuration survive
unless --reset-persistent / --reset-oem say otherwise. Pre-flight (mode, devices,
source, sizes) happens before the first write.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from cos import events
from cos import run as runner
from cos.boot import assessment, grubenv
from cos.cloudinit.hooks import run_chroot_hook, run_hook
from cos.cloudinit.sources import system_sources
from cos.config import Config
from cos.disk.image import device_size, ext_image_size, mkfs_ext4
from cos.disk.mount import mounted
from cos.disk.mounts import find_device, mount_source
from cos.errors import DiskError, StateError
from cos.log import log, step
from cos.oci.image import LocalImage
from cos.oci.reference import parse_ref, require_registry
from cos.oci.store import LayerStore, inspect_remote, snapshot_tag
from cos.snapshot import new_snapshotter
from cos.snapshot.base import snapshot_label
from cos.system.installed import Installed, Mode
from cos.system.kernel import check_bootable
from cos.system.state import ImageState, InstallState, SnapshotterState, now

RECOVERY_IMAGE = "boot/recovery.img"


@dataclass(frozen=True, kw_only=True)
class ResetRequest:
    system: str | None = None
    reset_persistent: bool = False
    reset_oem: bool = False
    reboot: bool = False
    installed: Installed | None = None


def _device(label: str, what: str, near: str | None) -> str:
    dev = find_device(label, timeout=5, near=near)
    if dev is None:
        raise DiskError(
            f"no {what} partition (label {label}) found",
            hint="reset repairs an installed disk; check the labels in state.yaml",
        )
    return dev


def reset(req: ResetRequest, cfg: Config) -> None:
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode("reset", (Mode.RECOVERY,), "boot the recovery entry, then run cos reset")
    # In recovery the initrd mounted COS_RECOVERY where the state partition usually is.
    old = inst.state()
    labels = {**cfg.labels.__dict__, **old.labels}
    # A second cos disk attached carries the same labels: take the ones on the disk
    # recovery booted from, and refuse when that cannot decide.
    near = mount_source(inst.state_dir)
    state_dev = _device(labels["state"], "state", near)
    persistent_dev = (
        _device(labels["persistent"], "persistent", near) if req.reset_persistent else None
    )
    ref = (
        require_registry(
            req.system,
            "reset",
            "pass --system HOST/REPO:TAG, or no --system to use the recovery image",
        )
        if req.system
        else None
    )
    recovery_img = inst.state_dir / RECOVERY_IMAGE
    if ref is None and not recovery_img.is_file():
        raise StateError(
            f"no recovery image at {recovery_img}",
            hint="pass --system REF to reset from a registry image",
        )
    runner.require("mkfs.ext4", "e2fsck", "resize2fs", "blockdev", *(["skopeo"] if ref else []))
    remote = (
        inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())
        if ref is not None
        else None
    )
    size = device_size(state_dev)

    hooks = system_sources(cfg)
    run_hook("before-reset", hooks)
    work = inst.run_dir / "reset"
    with step(f"Formatting the state partition {state_dev}"):
        mkfs_ext4(Path(state_dev), labels["state"], size=size)
    with ExitStack() as stack:
        state_dir = stack.enter_context(mounted(state_dev, work / "state"))
        snaps = new_snapshotter(state_dir, cfg.snapshot_fs, cfg.snapshotter)
        if remote is not None:
            store = LayerStore.on(state_dir)
            with step(f"Pulling {remote.ref}"):
                image = store.pull(remote, snapshot_tag(1), cfg.tls_verify)
            source, digest = str(remote.ref), remote.digest
            room = snaps.estimate(store.unpacked_size(snapshot_tag(1)))
        else:
            rec_tree = stack.enter_context(mounted(recovery_img, work / "recovery", "loop,ro"))
            source = old.recovery.source if old.recovery else str(recovery_img)
            digest = old.recovery.digest if old.recovery else ""
            room = ext_image_size(rec_tree)[0]
            image = LocalImage(parse_ref(f"dir:{rec_tree}"), rec_tree, "", "")

        with step("Building snapshot 1"), snaps.start(image, room, work) as p:
            check_bootable(p.tree, source)
            snap = ImageState.from_tree(
                p.tree,
                source=source,
                digest=digest,
                label=snapshot_label(1),
                fs=cfg.snapshot_fs,
                action="reset",
            )
            with step("Running the after-reset-chroot hook"):
                run_chroot_hook("after-reset-chroot", hooks, p.tree)
        new = InstallState(
            date=now(),
            snapshotter=SnapshotterState(
                type=snaps.kind, max_snaps=cfg.kept_snapshots(snaps.kind), fs=cfg.snapshot_fs
            ),
            labels=old.labels,
            recovery=old.recovery,
            history=old.history,
        )
        snaps.activate(
            p.number, state=new, oem_dir=inst.oem_dir, reason="reset", passive=[], image=snap
        )
        if remote is not None:
            store.release(snaps.has_layer)
    with step("Resetting the boot menu"):
        env_path = assessment.env_path(inst.oem_dir)
        if req.reset_oem:
            for entry in inst.oem_dir.iterdir():
                if entry.name in ("lost+found", assessment.ENV_FILE):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            grubenv.write(env_path, {assessment.PASSIVE: ""})
        else:
            assessment.end_trial(inst.oem_dir, [])
            grubenv.update(env_path, unset=("next_entry", "saved_entry"))
    if persistent_dev is not None:
        with step(f"Formatting the persistent partition {persistent_dev}"):
            mkfs_ext4(Path(persistent_dev), labels["persistent"], size=device_size(persistent_dev))
    run_hook("after-reset", hooks)
    log.info("Reset done: snapshot 1 from %s boots next", snap.source)
    events.summary(image=snap.source, digest=snap.digest, snapshot=1, changed=True)
    if req.reboot:
        runner.run(["systemctl", "reboot"], check=False)
