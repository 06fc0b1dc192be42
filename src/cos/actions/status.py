"""cos status: what is booted, what is installed, how much room is left."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cos.config import Config
from cos.errors import StateError
from cos.system.mounts import mount_table
from cos.system.release import read_os_release
from cos.system.state import read_state

RUN_DIR = Path("/run/cos")
BOOT_DEVICE_MOUNT = RUN_DIR / "state"  # where the initrd mounted the device holding the image


def _booted_mode(run_dir: Path) -> str | None:
    for mode in ("active", "passive", "recovery", "live"):
        if (run_dir / f"{mode}_mode").exists():
            return mode
    return None


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


def collect(cfg: Config, run_dir: Path = RUN_DIR, root: Path = Path("/")) -> dict[str, Any]:
    mode = _booted_mode(run_dir)
    if mode is None:
        raise StateError(
            "this system was not booted by cos (no /run/cos/*_mode)",
            hint="cos status describes a running cos system",
        )
    image = (run_dir / "image").read_text().strip() if (run_dir / "image").exists() else None
    state_dir = run_dir / BOOT_DEVICE_MOUNT.name
    state = read_state(state_dir)
    active_link = state_dir / ".snapshots/active"
    active_n = None
    if active_link.is_symlink():
        target = os.readlink(active_link)
        active_n = int(target.split("/")[0]) if target.split("/")[0].isdigit() else None
    booted_n: int | None = None
    if mode == "active":
        booted_n = active_n
    elif mode == "passive" and image:
        parts = Path(image).parts
        booted_n = int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else None
    rel = read_os_release(root)
    mounts = _mounts()
    labels = cfg.labels
    data: dict[str, Any] = {
        "mode": mode,
        "image_path": image,
        "booted_snapshot": booted_n,
        "os_release": {
            k: rel[k] for k in ("PRETTY_NAME", "IMAGE", "IMAGE_REPO", "IMAGE_TAG") if k in rel
        },
        "snapshots": [],
        "recovery": None,
        "partitions": [
            _partition(lbl, mounts)
            for lbl in (labels.efi, labels.oem, labels.recovery, labels.state, labels.persistent)
        ],
    }
    if state is not None:
        for n, s in sorted(state.snapshots.items()):
            data["snapshots"].append(
                {
                    "number": n,
                    "active": n == active_n if active_n is not None else s.active,
                    "booted": n == booted_n,
                    "source": s.source,
                    "digest": s.digest,
                    "date": s.date,
                    "from_action": s.from_action,
                    "image": s.os_release.get("IMAGE"),
                }
            )
        if state.recovery:
            r = state.recovery
            data["recovery"] = {
                "source": r.source,
                "digest": r.digest,
                "date": r.date,
                "from_action": r.from_action,
            }
    return data


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
        lines.append(
            f"  {s['number']:>3}  {flags or 'passive':14} {s['source']}  {s['digest'][:19]}  "
            f"{s['date']}  ({s['from_action']})"
        )
    if not data["snapshots"]:
        lines.append("  (no state.yaml on the boot device)")
    if data["recovery"]:
        r = data["recovery"]
        lines.append(f"Recovery:  {r['source']}  {r['digest'][:19]}  {r['date']}")
    lines.append("Partitions:")
    for p in data["partitions"]:
        where = p["mountpoint"] or "not mounted"
        room = f"  {p['free_mib']} MiB free of {p['size_mib']} MiB" if "free_mib" in p else ""
        lines.append(f"  {p['label']:15} {p['device'] or 'missing':12} {where}{room}")
    return "\n".join(lines)


def show_status(cfg: Config, as_json: bool = False) -> int:
    data = collect(cfg)
    print(json.dumps(data, indent=2) if as_json else render(data))
    return 0
