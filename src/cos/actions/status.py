"""cos status: what is booted, what is installed, how much room is left."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cos.boot import assessment
from cos.config import Config
from cos.disk.mounts import mount_table
from cos.errors import CosError, StateError
from cos.oci.digest import short_digest
from cos.snapshot import open_snapshotter
from cos.system.installed import FAILURE_FILE, Installed
from cos.system.release import read_os_release
from cos.system.state import read_state
from cos.system.trail import last_boot_summary


def _mounts() -> dict[str, str]:
    """Device source → first mount point."""
    out: dict[str, str] = {}
    for source, mnt in mount_table():
        out.setdefault(source, mnt)
    return out


def _partition(label: str, mounts: dict[str, str]) -> dict[str, Any]:
    link = Path("/dev/disk/by-label") / label
    dev = str(link.resolve()) if link.exists() else None
    info: dict[str, Any] = {"label": label, "device": dev, "mountpoint": None}
    if dev and dev in mounts:
        mnt = mounts[dev]
        st = os.statvfs(mnt)
        info.update(
            mountpoint=mnt,
            size_mib=st.f_blocks * st.f_frsize // (1024 * 1024),
            free_mib=st.f_bavail * st.f_frsize // (1024 * 1024),
        )
    return info


T = TypeVar("T")


def _read(damage: list[dict[str, str]], read: Callable[[], T]) -> T | None:
    try:
        return read()
    except CosError as exc:  # state.yaml, the snapshots dir, the grubenv
        damage.append({"message": exc.message, "hint": exc.hint})
        return None


def collect(
    cfg: Config, installed: Installed | None = None, root: Path = Path("/")
) -> dict[str, Any]:
    inst = installed or Installed.running(cfg.layout.oem_mount)
    mode = inst.mode()
    if mode is None:
        raise StateError(
            "this system was not booted by cos (no /run/cos/*_mode)",
            hint="cos status describes a running cos system",
        )
    # Damage is reported, not fatal: status is where a user learns how to repair it.
    damage: list[dict[str, str]] = []
    state = _read(damage, lambda: read_state(inst.state_dir))
    snaps = open_snapshotter(inst.state_dir, state, cfg.snapshot_fs, check=False)
    _read(damage, snaps.check)
    active_n = snaps.active()
    booted_n = inst.booted_snapshot()
    trial = (
        _read(damage, lambda: assessment.read_trial(inst.oem_dir))
        if assessment.env_path(inst.oem_dir).exists()
        else None
    )
    failure = None
    fail_file = inst.run_dir / FAILURE_FILE
    if fail_file.exists():
        try:
            failure = json.loads(fail_file.read_text())
        except ValueError:
            failure = {"reason": fail_file.read_text().strip()}
    rel = read_os_release(root)
    mounts = _mounts()
    labels = cfg.labels
    data: dict[str, Any] = {
        "mode": mode,
        "image_path": inst.booted_image(),
        "booted_snapshot": booted_n,
        "os_release": {
            k: rel[k] for k in ("PRETTY_NAME", "IMAGE", "IMAGE_REPO", "IMAGE_TAG") if k in rel
        },
        "snapshots": [],
        "trial": (
            {"snapshot": trial.snapshot, "tries_left": trial.tries_left, "fallback": trial.fallback}
            if trial
            else None
        ),
        "upgrade_failure": failure,
        "damage": damage,
        "last_boot": last_boot_summary(inst, cfg.layout.persistent_mount, cfg.labels.persistent),
        "staged": None,
        "recovery": None,
        "partitions": [
            _partition(lbl, mounts)
            for lbl in (labels.efi, labels.oem, labels.recovery, labels.state, labels.persistent)
        ],
    }
    present = set(_read(damage, snaps.numbers) or [])
    staged = snaps.staged(state) if present else None  # damage is reported above
    if staged is not None:
        s = staged.image
        data["staged"] = {
            "snapshot": staged.snapshot,
            "source": s.source,
            "digest": s.digest,
            "date": s.date,
            "image": s.os_release.get("IMAGE"),
        }
    if state is not None:
        data["snapshotter"] = str(snaps.kind)
        data["snapshots_bytes"] = _read(damage, snaps.total_bytes)
        for n, s in sorted(state.snapshots.items()):
            if staged is not None and n == staged.snapshot:
                continue  # listed by a switch to it cut short: still staged
            data["snapshots"].append(
                {
                    "number": n,
                    "active": n == active_n if active_n is not None else s.active,
                    "booted": n == booted_n,
                    "source": s.source,
                    "digest": s.digest,
                    "date": s.date,
                    "from_action": s.from_action,
                    "boot_assessment": str(s.boot_assessment) or None,
                    "image": s.os_release.get("IMAGE"),
                    # what deleting it would free: with shared layers, only its own
                    "bytes": _read(damage, partial(snaps.size, n)) if n in present else None,
                }
            )
        data["history"] = [h.to_dict() for h in state.history[-10:]]
        if state.recovery:
            r = state.recovery
            data["recovery"] = {
                "source": r.source,
                "digest": r.digest,
                "date": r.date,
                "from_action": r.from_action,
            }
    return data


def _mib(n: int) -> str:
    return f"{-(-n // (1024 * 1024))} MiB"


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Booted:    {data['mode']}"
        + (f" (snapshot {data['booted_snapshot']})" if data["booted_snapshot"] else ""),
        f"System:    {data['os_release'].get('PRETTY_NAME', '?')}"
        + (f" — image {data['os_release']['IMAGE']}" if "IMAGE" in data["os_release"] else ""),
        "Snapshots:",
    ]
    for s in data["snapshots"]:
        flags = ",".join(f for f, on in (("active", s["active"]), ("booted", s["booted"])) if on)
        assessed = f", {s['boot_assessment']}" if s.get("boot_assessment") else ""
        held = f"  {_mib(s['bytes'])} own" if s.get("bytes") is not None else ""
        lines.append(
            f"  {s['number']:>3}  {flags or 'passive':14} {s['source']}  "
            f"{short_digest(s['digest'])}  "
            f"{s['date']}  ({s['from_action']}{assessed}){held}"
        )
    if not data["snapshots"]:
        lines.append("  (no state.yaml on the boot device)")
    elif data.get("snapshots_bytes") is not None:
        lines.append(
            f"  {data['snapshotter']} snapshots: {_mib(data['snapshots_bytes'])} on COS_STATE"
            " in all (shared content counted once)"
        )
    if data.get("trial"):
        t = data["trial"]
        lines.append(
            f"Trial:     snapshot {t['snapshot']} not confirmed yet "
            f"({t['tries_left']} boot(s) left, then snapshot {t['fallback']})"
        )
    if data.get("staged"):
        s = data["staged"]
        lines.append(
            f"Staged:    snapshot {s['snapshot']}  {s['source']}  {short_digest(s['digest'])}"
            f"  {s['date']}  (`cos upgrade --apply` boots it)"
        )
    if data.get("last_boot"):
        lines.append(f"Last boot: {data['last_boot']}")
    for d in data.get("damage") or []:
        lines.append(f"DAMAGED:   {d['message']}")
        if d.get("hint"):
            lines.append(f"           repair: {d['hint']}")
    if data.get("upgrade_failure"):
        f = data["upgrade_failure"]
        lines.append(
            f"FAILED:    snapshot {f.get('snapshot', '?')} did not boot: {f.get('reason', '')};"
            f" rolled back to snapshot {f.get('booted', '?')}"
        )
    if data["recovery"]:
        r = data["recovery"]
        lines.append(f"Recovery:  {r['source']}  {short_digest(r['digest'])}  {r['date']}")
    lines.append("Partitions:")
    for p in data["partitions"]:
        where = p["mountpoint"] or "not mounted"
        room = f"  {p['free_mib']} MiB free of {p['size_mib']} MiB" if "free_mib" in p else ""
        lines.append(f"  {p['label']:15} {p['device'] or 'missing':12} {where}{room}")
    return "\n".join(lines)


def show_status(cfg: Config, as_json: bool = False, installed: Installed | None = None) -> int:
    data = collect(cfg, installed)
    print(json.dumps(data, indent=2) if as_json else render(data))
    return 0
