"""cos rollback: make a kept snapshot the one that boots.

Without --once the choice is permanent (the `active` link moves, like an upgrade's
switch, but to a snapshot that already booted: no trial). With --once only the next
boot runs it (GRUB's one-shot next_entry), and the boot after that is back on active.
"""

from __future__ import annotations

from dataclasses import dataclass

from cos import run as runner
from cos.boot import assessment
from cos.config import Config
from cos.disk.mount import writable
from cos.errors import StateError
from cos.log import log, step
from cos.snapshot import open_snapshotter
from cos.snapshot.base import Trial
from cos.system.installed import INSTALLED_MODES, Installed
from cos.system.state import Assessment


@dataclass(frozen=True, kw_only=True)
class RollbackRequest:
    snapshot: int | None = None
    once: bool = False
    reboot: bool = False
    installed: Installed | None = None


def rollback(req: RollbackRequest, cfg: Config) -> int:
    inst = req.installed or Installed.running(cfg.layout.oem_mount)
    inst.require_mode(
        "rollback", INSTALLED_MODES, "boot the installed system (not recovery or live)"
    )
    state = inst.state()
    snaps = open_snapshotter(inst.state_dir, state, cfg.snapshot_fs)
    assessment.check_env(inst.oem_dir)
    active = snaps.active()
    kept = snaps.bootable(state)
    target = req.snapshot
    staged = snaps.staged(state)
    if staged is not None and target == staged.snapshot:
        raise StateError(
            f"snapshot {target} is staged: it has never booted",
            hint="`cos upgrade --apply` switches to it (on trial)",
        )
    if target is None:
        older = sorted((n for n in kept if n != active), reverse=True)
        if not older:
            raise StateError(
                "there is no other snapshot to roll back to",
                hint="cos status lists the snapshots; max-snaps sets how many are kept",
            )
        target = older[0]
    if target not in kept:
        raise StateError(
            f"snapshot {target} does not exist (kept: {', '.join(map(str, kept)) or 'none'})",
            hint="cos status lists the snapshots",
        )
    if target == active and not req.once:
        log.info("Snapshot %d is already active", target)
        return target
    if req.once:
        with step(f"Booting snapshot {target} once, at the next boot"):
            entry = "active" if target == active else f"passive{target}"
            assessment.set_next_entry(inst.oem_dir, entry)
    else:
        # A snapshot that never confirmed a boot (an upgrade's, still on trial) goes on
        # trial again: GRUB falls back to what runs now if it does not come up.
        record = state.snapshots.get(target)
        unproven = record is not None and record.boot_assessment == Assessment.TRIAL
        trial = Trial(fallback=active, attempts=cfg.boot_attempts) if unproven else None
        with step(f"Making snapshot {target} active"), writable(inst.state_dir):
            snaps.activate(
                target,
                state=state,
                oem_dir=inst.oem_dir,
                reason="rollback",
                passive=kept,
                trial=trial,
            )
    log.info("Snapshot %d boots next", target)
    if req.reboot:
        runner.run(["systemctl", "reboot"], check=False)
    return target
