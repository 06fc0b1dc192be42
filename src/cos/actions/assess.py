"""cos boot-assessment: the userspace half of boot assessment (run by systemd).

Early in every boot (`cos-boot-assessment.service`) it notices when GRUB gave up
on a trial snapshot and booted the fallback: it records the failure
(/run/cos/upgrade_failure and state.yaml) and makes the running snapshot active
again, so the machine settles without anyone's help. After multi-user
(`cos-mark-good.service`, `--mark-good`) it runs the checks in
/usr/libexec/cos-checks and, when all pass, confirms the trial snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path

from cos import run as runner
from cos.boot import assessment
from cos.config import Config
from cos.disk.mount import writable
from cos.errors import StateError, ToolError
from cos.fsutil import atomic_write
from cos.log import log
from cos.snapshot import open_snapshotter
from cos.snapshot.base import Snapshotter
from cos.system.installed import FAILURE_FILE, INSTALLED_MODES, RUN_DIR, Installed
from cos.system.state import Assessment, InstallState, now, read_state, write_state
from cos.system.trail import Trail

CHECKS_DIR = Path("/usr/libexec/cos-checks")
SYSTEMD_RUN_DIR = Path("/run/systemd/system")  # present when systemd is PID 1
DEADLINE_UNIT = "cos-trial-deadline"


def run_checks(checks_dir: Path | None = None) -> list[str]:
    """Run every executable check; returns the failures (name: reason)."""
    checks_dir = checks_dir or CHECKS_DIR
    failed = []
    for check in sorted(checks_dir.iterdir()) if checks_dir.is_dir() else []:
        if not check.is_file() or not check.stat().st_mode & 0o111:
            continue
        try:
            runner.run([str(check)], timeout=300)
        except ToolError as exc:
            failed.append(f"{check.name}: {exc.message}")
    return failed


def assess(
    cfg: Config,
    mark_good: bool = False,
    installed: Installed | None = None,
    *,
    deadline: bool = False,
) -> str:
    """Returns what was decided: none, fallback, good, checks-failed, pending, or
    (deadline: the trial's time is up) rebooting. The running system's boot trail
    records it."""
    inst = installed or Installed.running(cfg.layout.oem_mount)
    decided = _assess(cfg, inst, mark_good=mark_good, deadline=deadline)
    if inst.run_dir == RUN_DIR:
        trail = Trail.of(inst, cfg.layout.persistent_mount)
        trail.record(**{"deadline" if deadline else "assessment": decided})
    return decided


def _assess(cfg: Config, inst: Installed, *, mark_good: bool, deadline: bool) -> str:
    mode = inst.mode()
    if mode is None or mode not in INSTALLED_MODES:
        return "none"
    trial = assessment.read_trial(inst.oem_dir)
    if trial is None:
        return "none"
    booted = inst.booted_snapshot()
    recorded = _recorded(inst)
    snaps = open_snapshotter(inst.state_dir, recorded, cfg.snapshot_fs)
    if assessment.fell_back(trial, mode, booted) and booted is not None:
        _record_failure(inst, snaps, trial, booted)
        return "fallback"
    if booted != trial.snapshot:
        if snaps.active() != trial.snapshot:
            # The upgrade never switched (a crash between its writes): no trial left.
            others = [n for n in snaps.bootable(recorded) if n != snaps.active()]
            assessment.end_trial(inst.oem_dir, others)
            return "none"
        return "pending"  # a passive boot during a trial: the trial goes on
    if deadline:
        return _deadline(cfg, trial)
    if not mark_good:
        _arm_deadline(cfg, inst, trial)
        return "pending"
    failures = run_checks()
    if failures:
        for f in failures:
            log.error("boot check failed: %s", f)
        return "checks-failed"
    assessment.end_trial(inst.oem_dir)
    _set_assessment(inst, trial.snapshot, Assessment.GOOD)
    log.info("snapshot %d confirmed good", trial.snapshot)
    return "good"


def _arm_deadline(cfg: Config, inst: Installed, trial: assessment.Trial) -> None:
    """A trial boot gets trial-timeout seconds to confirm itself. A boot that hangs
    before multi-user, or whose checks fail, is rebooted then: GRUB counts the tries
    down and falls back, with nobody at the machine."""
    if not cfg.trial_timeout or inst.run_dir != RUN_DIR or not SYSTEMD_RUN_DIR.is_dir():
        return  # not the running system under systemd (maintenance, tests)
    log.info(
        "trial boot of snapshot %d: it has %d s to confirm a good boot (%d tries left)",
        trial.snapshot,
        cfg.trial_timeout,
        trial.tries_left,
    )
    runner.run(
        [
            "systemd-run",
            f"--on-active={cfg.trial_timeout}",
            f"--unit={DEADLINE_UNIT}",
            "--description=cos: reboot a trial boot that did not confirm itself",
            "--property=StandardError=journal+console",
            "/usr/bin/cos",
            "boot-assessment",
            "--deadline",
        ],
        check=False,
    )


def _deadline(cfg: Config, trial: assessment.Trial) -> str:
    """The deadline fired and the booted trial snapshot is still unconfirmed."""
    log.error(
        "snapshot %d did not confirm a good boot within %d s; rebooting (%d tries left)",
        trial.snapshot,
        cfg.trial_timeout,
        trial.tries_left,
    )
    runner.run(["systemctl", "reboot", "--force"], check=False)
    return "rebooting"


def _recorded(inst: Installed) -> InstallState | None:
    """state.yaml if it can be read: early in boot a damaged one must not stop the
    assessment (the loop backend is then assumed, as on disks that name none)."""
    try:
        return read_state(inst.state_dir)
    except StateError as exc:
        log.error("%s", exc)
        return None


def _set_assessment(inst: Installed, n: int, value: Assessment) -> None:
    state = inst.state()
    if n in state.snapshots:
        with writable(inst.state_dir):
            state.snapshots[n].boot_assessment = value
            write_state(inst.state_dir, state)


def _record_failure(
    inst: Installed, snaps: Snapshotter, trial: assessment.Trial, booted: int
) -> None:
    report = {
        "snapshot": trial.snapshot,
        "booted": booted,
        "date": now(),
        "reason": "no good boot within the allowed attempts",
    }
    atomic_write(inst.run_dir / FAILURE_FILE, json.dumps(report) + "\n")
    log.error(
        "snapshot %d failed to boot; running snapshot %d and making it active again",
        trial.snapshot,
        booted,
    )
    state = inst.state()
    with writable(inst.state_dir):
        if trial.snapshot in state.snapshots:
            state.snapshots[trial.snapshot].boot_assessment = Assessment.FAILED
        if booted not in snaps.numbers():
            raise StateError(f"the booted snapshot {booted} is not on the state partition")
        # The failed image is remembered (upgrade refuses it without --force); it stays
        # in the menu for inspection, and what runs now becomes active again.
        state.record("boot-failed", trial.snapshot, state.snapshots.get(trial.snapshot))
        snaps.activate(
            booted,
            state=state,
            oem_dir=inst.oem_dir,
            reason=f"fallback from {trial.snapshot}",
            passive=snaps.bootable(state),
        )
