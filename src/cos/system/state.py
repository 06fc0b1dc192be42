"""state.yaml: what is installed where, the source of truth for every action.

Kept on COS_STATE and COS_RECOVERY. Written atomically (temp + fsync + rename +
dir fsync) so a crash never leaves a torn file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cos.errors import StateError
from cos.fsutil import atomic_write

STATE_FILE = "state.yaml"
HISTORY_LIMIT = 50


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class ImageState:
    source: str
    digest: str
    label: str
    fs: str
    date: str
    from_action: str
    os_release: dict[str, str] = field(default_factory=dict)
    active: bool = False
    # Boot assessment: "" (not assessed: installed, rolled back to), "trial" (switched
    # to by an upgrade, not confirmed yet), "good", "failed" (GRUB fell back from it).
    boot_assessment: str = ""


@dataclass
class InstallState:
    date: str
    snapshotter: dict[str, Any]
    labels: dict[str, str]
    snapshots: dict[int, ImageState] = field(default_factory=dict)
    recovery: ImageState | None = None
    # What each action did, oldest first (kept to HISTORY_LIMIT entries): snapshots come
    # and go, this says how the system got where it is.
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, action: str, snapshot: int | None, image: ImageState | None) -> None:
        entry: dict[str, Any] = {"date": now(), "action": action}
        if snapshot is not None:
            entry["snapshot"] = snapshot
        if image is not None:
            entry["source"] = image.source
            entry["digest"] = image.digest
        self.history = [*self.history, entry][-HISTORY_LIMIT:]

    def to_yaml(self) -> str:
        def conv(d: dict[str, Any]) -> dict[str, Any]:
            return {k.replace("_", "-"): v for k, v in d.items()}

        data: dict[str, Any] = {
            "date": self.date,
            "snapshotter": self.snapshotter,
            "labels": self.labels,
            "snapshots": {n: conv(asdict(s)) for n, s in sorted(self.snapshots.items())},
        }
        if self.recovery is not None:
            data["recovery"] = conv(asdict(self.recovery))
        data["history"] = self.history
        return "# Written by cos. Do not edit.\n" + yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str = STATE_FILE) -> InstallState:
        try:
            data = yaml.safe_load(text) or {}

            def img(d: dict[str, Any]) -> ImageState:
                known = {f.name for f in fields(ImageState)}
                # Keys a newer toolkit wrote are kept out, not fatal.
                return ImageState(
                    **{k.replace("-", "_"): v for k, v in d.items() if k.replace("-", "_") in known}
                )

            return cls(
                date=str(data.get("date", "")),
                snapshotter=dict(data.get("snapshotter", {})),
                labels=dict(data.get("labels", {})),
                snapshots={int(n): img(s) for n, s in (data.get("snapshots") or {}).items()},
                recovery=img(data["recovery"]) if data.get("recovery") else None,
                history=[dict(h) for h in data.get("history") or []],
            )
        except (yaml.YAMLError, TypeError, ValueError, AttributeError) as exc:
            raise StateError(f"{where} is not a valid cos state file: {exc}") from exc

    def active(self) -> int | None:
        for n, s in self.snapshots.items():
            if s.active:
                return n
        return None


def write_state(directory: Path, state: InstallState) -> None:
    atomic_write(Path(directory) / STATE_FILE, state.to_yaml())


def read_state(directory: Path) -> InstallState | None:
    p = Path(directory) / STATE_FILE
    if not p.is_file():
        return None
    return InstallState.from_yaml(p.read_text(), str(p))
