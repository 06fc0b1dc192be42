"""cos upgrade-recovery: replace the recovery system in one atomic step.

The image is pulled into the layer store on COS_STATE and unpacked into a scratch
snapshot there; the new recovery files are written beside the old ones on
COS_RECOVERY (`boot.<N+1>/`) and the `boot` link is renamed onto them. A crash
before the rename leaves the old recovery system whole; the scratch image and the
pulled blobs are removed whatever happens.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass

from cos import events
from cos import run as runner
from cos.boot.recovery import RECOVERY_LABEL, recovery_generations, write_recovery
from cos.config import Config, Filesystem
from cos.disk.mount import mounted, writable
from cos.disk.mounts import find_device, mount_source
from cos.disk.plan import MIB
from cos.errors import DiskError, StateError
from cos.fsutil import atomic_symlink, free_bytes
from cos.log import log, step
from cos.oci.digest import short_digest
from cos.oci.image import unpack
from cos.oci.reference import require_registry
from cos.oci.store import LayerStore, inspect_remote, snapshot_tag
from cos.snapshot.loop import estimate_image_bytes, scratch_tree
from cos.system.installed import INSTALLED_MODES, Installed
from cos.system.kernel import check_bootable
from cos.system.state import ImageState, write_state

SCRATCH = ".scratch"
TAG = "recovery"


@dataclass(frozen=True, kw_only=True)
class RecoveryRequest:
    system: str | None = None
    force: bool = False
    installed: Installed | None = None


def upgrade_recovery(req: RecoveryRequest, cfg: Config) -> None:
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode(
        "upgrade-recovery",
        INSTALLED_MODES,
        "the recovery system cannot replace itself: boot the installed system",
    )
    state = inst.state()
    source = req.system or (state.recovery.source if state.recovery else "")
    if not source:
        raise StateError(
            "no recovery image given and none recorded in state.yaml",
            hint="pass --recovery-system REF",
        )
    ref = require_registry(source, "upgrade-recovery", "pass --recovery-system HOST/REPO:TAG")
    runner.require("skopeo", "mkfs.ext4", "e2fsck", "resize2fs", "mksquashfs")
    with step(f"Reading {ref}"):
        remote = inspect_remote(ref, cfg.tls_verify, cfg.arch(), cfg.signature_key())
    if state.recovery and state.recovery.digest == remote.digest and not req.force:
        log.info("Recovery is up to date: %s (%s)", ref, short_digest(remote.digest))
        events.summary(image=str(ref), digest=remote.digest, changed=False)
        return

    with ExitStack() as stack:
        rec_dir = inst.recovery_dir
        if rec_dir is None:
            label = state.labels.get("recovery", cfg.labels.recovery)
            dev = find_device(label, timeout=5, near=mount_source(inst.state_dir))
            if dev is None:
                raise DiskError(f"no recovery partition (label {label})")
            rec_dir = stack.enter_context(mounted(dev, inst.run_dir / "recovery-upgrade"))
        stack.enter_context(writable(inst.state_dir))
        store = LayerStore.on(inst.state_dir)
        want = store.estimated_tar_size(remote)
        need_state = sum(s for _, s in store.missing(remote)) + estimate_image_bytes(want)
        if need_state > free_bytes(inst.state_dir):
            raise DiskError(
                f"the state partition needs {need_state // MIB} MiB of scratch space for the "
                f"new recovery system; {free_bytes(inst.state_dir) // MIB} MiB are free",
                hint="remove a passive snapshot (max-snaps) or free space on COS_STATE",
            )
        squashed = cfg.recovery_fs == Filesystem.SQUASHFS
        need_rec = want // 2 if squashed else estimate_image_bytes(want)
        if need_rec > free_bytes(rec_dir):
            raise DiskError(
                f"the recovery partition needs about {need_rec // MIB} MiB for the new system "
                f"beside the current one; {free_bytes(rec_dir) // MIB} MiB are free",
                hint="a larger partitions.recovery is needed (reinstall)",
            )
        stack.callback(store.keep_only, {snapshot_tag(n) for n in state.held()})
        with step(f"Pulling {ref}"):
            image = store.pull(remote, TAG, cfg.tls_verify)
        gens = recovery_generations(rec_dir)
        boot_link = rec_dir / "boot"
        if boot_link.is_dir() and not boot_link.is_symlink():
            # A disk from before generations: adopt its files as generation 0.
            os.rename(boot_link, rec_dir / "boot.0")
            atomic_symlink("boot.0", boot_link)
            gens = [0]
        gen = max(gens, default=0) + 1
        with (
            step("Building the recovery system"),
            scratch_tree(
                inst.state_dir / SCRATCH,
                estimate_image_bytes(store.unpacked_size(TAG)),
                inst.run_dir / "recovery-scratch",
            ) as tree,
        ):
            unpack(image, tree)
            boot = check_bootable(tree, ref)
            write_recovery(tree, boot, rec_dir, cfg.recovery_fs, gen)
            state.recovery = ImageState.from_tree(
                tree,
                source=str(ref),
                digest=remote.digest,
                label=RECOVERY_LABEL,
                fs=cfg.recovery_fs,
                action="upgrade-recovery",
            )
        state.record("upgrade-recovery", None, state.recovery)
        write_state(inst.state_dir, state)
        write_state(rec_dir, state)
        for old in gens:
            shutil.rmtree(rec_dir / f"boot.{old}", ignore_errors=True)
    log.info("Recovery system replaced by %s (%s)", ref, short_digest(remote.digest))
    events.summary(image=str(ref), digest=remote.digest, changed=True)
