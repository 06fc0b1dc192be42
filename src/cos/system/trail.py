"""The boot trail: what cos did in each boot, kept for the last KEEP boots.

Every stage run at boot (rootfs and initramfs in the initrd, fs, boot, network and
reconcile under systemd) and the boot assessment add their outcome to one record
per boot: the mode and snapshot booted, for each stage the documents read, each
step that ran, was skipped or failed with its message, and how long it took. The
record of the running boot lives in /run/cos; on an installed system (active or
passive) it is also kept on COS_PERSISTENT, where `cos logs` and `cos status` read it
after the next boot and recovery mode can read it too.

Writing the trail must never hurt a boot: every write is atomic (a power loss keeps
the previous version), sizes are bounded (steps, messages, stages, boots), and a
failure to write is a warning, not an error.

A stage that no cloud-config can name is not started at all (the units'
ExecCondition, /usr/libexec/cos-stage-wanted, leaves a marker in
/run/cos/skipped-stages/); the next write of the record, or a read of the running
boot's, lists it as not started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos.disk.mount import mounted
from cos.disk.mounts import AmbiguousLabel, find_device, is_mountpoint, mount_source
from cos.errors import CosError
from cos.fsutil import atomic_write
from cos.system.installed import INSTALLED_MODES, RUN_DIR, Installed, Mode
from cos.system.state import now

log = logging.getLogger("cos")

RUN_RECORD = "boot-trail.json"  # in /run/cos: the running boot's record
SKIPPED_DIR = "skipped-stages"  # in /run/cos: stages this boot did not start
NOT_STARTED = "not started: no cloud-config names this stage"
TRAIL_DIR = ".cos/boots"  # below the persistent mount: one file per boot
KEEP = 20
MAX_STAGES = 30
MAX_STEPS = 150  # per stage
MAX_TEXT = 200


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _entry(
    stage: str,
    seconds: float,
    documents: Sequence[str],
    steps: Sequence[StepOutcome],
    invalid: Sequence[str],
) -> dict[str, Any]:
    """One stage of a boot's record, bounded."""
    return {
        "stage": _short(stage),
        "date": now(),
        "seconds": round(seconds, 3),
        "documents": [_short(d) for d in documents[:MAX_STEPS]],
        "steps": [
            {"op": _short(s.op), "status": s.status, "detail": _short(s.detail)}
            for s in steps[:MAX_STEPS]
        ],
        "invalid": [_short(e) for e in invalid[:MAX_STEPS]],
    }


def _with_skipped(rec: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The record with this boot's not-started stages (markers in run_dir) added, each
    once (`folded` remembers them: a stage later pushed out by MAX_STAGES stays out)."""
    try:
        names = sorted(p.name for p in (run_dir / SKIPPED_DIR).iterdir())
    except OSError:
        return rec
    stages, folded = rec.get("stages"), rec.get("folded", [])
    if not isinstance(stages, list) or not isinstance(folded, list):
        return rec
    for name in names[:MAX_STAGES]:
        if name not in folded:
            folded.append(name)
            stages.append({**_entry(name, 0, [], [], []), "skipped": NOT_STARTED})
    rec["stages"], rec["folded"] = stages[-MAX_STAGES:], folded[-MAX_STAGES:]
    return rec


def stage_started(run_dir: Path, stage: str) -> None:
    """A stage runs after all (the reconcile timer, once a cloud-config names it): its
    not-started marker goes, so later records do not say otherwise."""
    with contextlib.suppress(OSError):
        (run_dir / SKIPPED_DIR / stage).unlink(missing_ok=True)


@dataclass(frozen=True)
class StepOutcome:
    op: str
    status: str  # ran | skipped | failed
    detail: str = ""


@dataclass(frozen=True)
class Trail:
    """Where this boot's record goes: run_dir always, kept_dir when the system's
    persistent partition is mounted (None in recovery and live modes)."""

    run_dir: Path
    kept_dir: Path | None
    mode: str | None = None
    snapshot: int | None = None

    @classmethod
    def of(cls, inst: Installed, persistent_mount: str) -> Trail:
        mode = inst.mode()
        pmount = Path(persistent_mount)
        kept = mode in INSTALLED_MODES and inst.run_dir == RUN_DIR and is_mountpoint(pmount)
        return cls(
            inst.run_dir,
            pmount / TRAIL_DIR if kept else None,
            str(mode) if mode else None,
            inst.booted_snapshot(),
        )

    def current(self) -> dict[str, Any]:
        p = self.run_dir / RUN_RECORD
        try:
            data = json.loads(p.read_text())
            if isinstance(data, dict) and data.get("boot_id") == _boot_id():
                return data
        except (OSError, ValueError):
            pass
        return {
            "boot": self._next_number(),
            "boot_id": _boot_id(),
            "started": now(),
            "mode": self.mode,
            "snapshot": self.snapshot,
            "stages": [],
        }

    def record_stage(
        self,
        stage: str,
        *,
        seconds: float,
        documents: Sequence[str],
        steps: Sequence[StepOutcome],
        invalid: Sequence[str],
    ) -> None:
        def change(rec: dict[str, Any]) -> None:
            stage_started(self.run_dir, stage)
            rec["stages"] = [
                st
                for st in rec.get("stages", [])
                if not (isinstance(st, dict) and st.get("stage") == stage and st.get("skipped"))
            ]
            entry = _entry(stage, seconds, documents, steps, invalid)
            rec["stages"] = [*rec.get("stages", []), entry][-MAX_STAGES:]

        self._update(change)

    def record(self, **facts: Any) -> None:
        """Facts of the boot: mode, snapshot, assessment."""
        self._update(lambda rec: rec.update(facts))

    def _update(self, change: Any) -> None:
        try:
            rec = self.current()
            if rec.get("boot") is None and self.kept_dir is not None:
                rec["boot"] = self._next_number()  # made before the partition was mounted
            change(rec)
            _with_skipped(rec, self.run_dir)
            text = json.dumps(rec, indent=1) + "\n"
            atomic_write(self.run_dir / RUN_RECORD, text)
            if self.kept_dir is not None and rec.get("boot") is not None:
                self.kept_dir.mkdir(parents=True, exist_ok=True)
                atomic_write(self.kept_dir / f"{rec['boot']:06d}.json", text)
                for old in _files(self.kept_dir)[:-KEEP]:
                    old.unlink(missing_ok=True)
        except (OSError, ValueError, TypeError, CosError) as exc:
            log.warning("the boot trail was not written: %s", exc)

    def _next_number(self) -> int | None:
        if self.kept_dir is None:
            return None  # recovery, live: the record stays in RAM
        files = _files(self.kept_dir)
        return int(files[-1].stem) + 1 if files else 1


def _files(kept_dir: Path) -> list[Path]:
    if not kept_dir.is_dir():
        return []
    found = [p for p in kept_dir.glob("*.json") if p.stem.isascii() and p.stem.isdecimal()]
    return sorted(found, key=lambda p: int(p.stem))


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read(Path("/proc/sys/kernel/random/boot_id"))


def kept_boots(kept_dir: Path) -> list[dict[str, Any]]:
    """Records of the kept boots, oldest first (unreadable ones are left out)."""
    out = []
    for p in _files(kept_dir):
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def failures(record: dict[str, Any]) -> list[tuple[str, int]]:
    """(stage, failed steps + invalid documents) for each stage that had any."""
    out = []
    for st in record.get("stages", []):
        bad = sum(s.get("status") == "failed" for s in st.get("steps", [])) + len(
            st.get("invalid", [])
        )
        if bad:
            out.append((str(st.get("stage")), bad))
    return out


@contextmanager
def _kept_dir(inst: Installed, persistent_mount: str, label: str) -> Iterator[Path | None]:
    """The kept records' dir; in recovery COS_PERSISTENT is mounted read-only to read it
    (the active system's boots are what recovery wants to look at)."""
    pmount = Path(persistent_mount)
    if inst.mode() != Mode.RECOVERY or is_mountpoint(pmount):
        yield pmount / TRAIL_DIR if is_mountpoint(pmount) else None
        return
    try:
        dev = find_device(label, timeout=2, near=mount_source(inst.state_dir))
    except AmbiguousLabel as exc:
        log.warning("%s; the active system's boots are not read", exc.message)
        dev = None
    if dev is None:
        yield None
        return
    with (
        tempfile.TemporaryDirectory(prefix="cos-logs-", dir=inst.run_dir) as where,
        mounted(dev, Path(where), "ro") as mnt,
    ):
        yield mnt / TRAIL_DIR


def boots(inst: Installed, persistent_mount: str, label: str) -> list[dict[str, Any]]:
    """Kept boots, oldest first, and this boot's record when it is not kept."""
    with _kept_dir(inst, persistent_mount, label) as kept:
        records = kept_boots(kept) if kept is not None else []
    try:
        current = json.loads((inst.run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        current = None
    if isinstance(current, dict) and current.get("boot") not in {r.get("boot") for r in records}:
        records.append(_with_skipped(current, inst.run_dir))
    return records


def render_record(record: dict[str, Any]) -> str:
    head = f"boot {record.get('boot') if record.get('boot') is not None else '(not kept)'}"
    lines = [
        f"{head}: {record.get('started', '?')}, {record.get('mode') or '?'} mode"
        + (f", snapshot {record['snapshot']}" if record.get("snapshot") else "")
        + (f", boot assessment: {record['assessment']}" if record.get("assessment") else "")
    ]
    for st in record.get("stages", []):
        if st.get("skipped"):
            lines.append(f"  stage {st.get('stage')}: {st['skipped']}")
            continue
        steps = st.get("steps", [])
        counts = {k: sum(s.get("status") == k for s in steps) for k in ("ran", "skipped", "failed")}
        lines.append(
            f"  stage {st.get('stage')}: {len(st.get('documents', []))} document(s),"
            f" {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed"
            f" ({st.get('seconds', 0):.2f} s)"
        )
        for s in steps:
            if s.get("status") == "failed":
                lines.append(f"    FAILED {s.get('op')}: {s.get('detail')}")
        for e in st.get("invalid", []):
            lines.append(f"    INVALID {e}")
    return "\n".join(lines)


def last_boot_summary(inst: Installed, persistent_mount: str, label: str) -> str | None:
    """One line for status when the last boot had failures, None when it had none."""
    try:
        records = boots(inst, persistent_mount, label)
    except (OSError, CosError):
        return None
    if not records:
        return None
    rec = records[-1]
    bad = failures(rec)
    if not bad:
        return None
    n = rec.get("boot")
    what = "; ".join(f"{k} step(s) failed in stage {stage}" for stage, k in bad)
    where = f"`cos logs --boot {n}`" if n is not None else "`cos logs`"
    return f"boot {n if n is not None else '(this one)'}: {what} — {where}"
