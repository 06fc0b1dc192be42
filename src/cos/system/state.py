"""state.yaml: what is installed where, the source of truth for every action.

Kept on COS_STATE and COS_RECOVERY. Written atomically (temp + fsync + rename +
dir fsync) so a crash never leaves a torn file. Reading is lenient where a newer
toolkit may have added something (unknown keys are left out) and strict where a
value cos acts on is wrong (a StateError, never a half-read state).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from cos.config import Config, Filesystem, SnapshotterKind
from cos.errors import StateError
from cos.fsutil import atomic_write
from cos.system.release import read_os_release

STATE_FILE = "state.yaml"
HISTORY_LIMIT = 50
MAX_STATE_BYTES = 1 << 20  # far above what 50 history entries and a few snapshots take
# os-release fields a snapshot's record keeps: enough to tell images apart in status.
RELEASE_KEYS = ("NAME", "VERSION_ID", "IMAGE_REPO", "IMAGE_TAG", "IMAGE")


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Assessment(StrEnum):
    """Boot assessment of a snapshot."""

    NONE = ""  # not assessed: installed, reset, rolled back to
    TRIAL = "trial"  # switched to by an upgrade, not confirmed yet
    GOOD = "good"  # confirmed by mark-good
    FAILED = "failed"  # GRUB fell back from it


# Spellings older disks (and Elemental) wrote for the same backends.
_KIND_ALIASES = {"loopdevice": SnapshotterKind.LOOP}


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
    boot_assessment: Assessment = Assessment.NONE

    @classmethod
    def from_tree(
        cls, tree: Path, *, source: str, digest: str, label: str, fs: str, action: str
    ) -> ImageState:
        """What state.yaml records of a snapshot or recovery system made from tree."""
        rel = read_os_release(tree)
        return cls(
            source=source,
            digest=digest,
            label=label,
            fs=str(fs),
            date=now(),
            from_action=action,
            os_release={k: rel[k] for k in RELEASE_KEYS if k in rel},
        )


@dataclass
class Staged:
    """A snapshot `cos upgrade --download-only` built and no menu offers: it boots only
    after `cos upgrade --apply` switches to it. The record is written before the build
    starts, so a complete snapshot is never without one; a record whose snapshot is
    missing (a build cut short) stages nothing (`Snapshotter.staged`)."""

    snapshot: int
    image: ImageState


@dataclass
class SnapshotterState:
    type: SnapshotterKind = SnapshotterKind.LOOP
    max_snaps: int = 2
    fs: Filesystem = Filesystem.EXT4


@dataclass(frozen=True)
class HistoryEntry:
    """One thing an action did: snapshots come and go, the history says how the
    system got where it is."""

    date: str
    action: str
    snapshot: int | None = None
    source: str | None = None
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class InstallState:
    date: str
    snapshotter: SnapshotterState
    labels: dict[str, str]
    snapshots: dict[int, ImageState] = field(default_factory=dict)
    recovery: ImageState | None = None
    history: list[HistoryEntry] = field(default_factory=list)  # oldest first
    staged: Staged | None = None

    @classmethod
    def new(cls, cfg: Config, *, recovery: ImageState | None) -> InstallState:
        """state.yaml of a fresh installation: no snapshot yet (activate adds the
        first), the recovery system it was made with."""
        labels = cfg.labels
        state = cls(
            date=now(),
            snapshotter=SnapshotterState(
                type=cfg.snapshotter,
                max_snaps=cfg.kept_snapshots(cfg.snapshotter),
                fs=cfg.snapshot_fs,
            ),
            labels={
                "efi": labels.efi,
                "oem": labels.oem,
                "recovery": labels.recovery,
                "state": labels.state,
                "persistent": labels.persistent,
            },
            recovery=recovery,
        )
        return state

    def record(self, action: str, snapshot: int | None, image: ImageState | None) -> None:
        entry = HistoryEntry(
            date=now(),
            action=action,
            snapshot=snapshot,
            source=image.source if image else None,
            digest=image.digest if image else None,
        )
        self.history = [*self.history, entry][-HISTORY_LIMIT:]

    def to_yaml(self) -> str:
        data: dict[str, Any] = {
            "date": self.date,
            "snapshotter": {
                "type": str(self.snapshotter.type),
                "max-snaps": self.snapshotter.max_snaps,
                "fs": str(self.snapshotter.fs),
            },
            "labels": self.labels,
            "snapshots": {n: _image_dict(s) for n, s in sorted(self.snapshots.items())},
        }
        if self.staged is not None:
            data["staged"] = {"snapshot": self.staged.snapshot, **_image_dict(self.staged.image)}
        if self.recovery is not None:
            data["recovery"] = _image_dict(self.recovery)
        data["history"] = [h.to_dict() for h in self.history]
        return "# Written by cos. Do not edit.\n" + yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, where: str = STATE_FILE) -> InstallState:
        try:
            data = yaml.safe_load(text)
            if not isinstance(data, dict):
                raise ValueError("not a mapping" if data is not None else "empty")
            missing = [k for k in ("date", "labels", "snapshots") if k not in data]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            return cls(
                date=str(data.get("date", "")),
                snapshotter=_snapshotter(data.get("snapshotter") or {}),
                labels={str(k): str(v) for k, v in dict(data.get("labels") or {}).items()},
                snapshots={int(n): _image(s) for n, s in (data.get("snapshots") or {}).items()},
                recovery=_image(data["recovery"]) if data.get("recovery") else None,
                history=[_history(h) for h in data.get("history") or []],
                staged=_staged(data["staged"]) if data.get("staged") else None,
            )
        except (yaml.YAMLError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StateError(
                f"{where} is not a valid cos state file: {detail}",
                hint=f"restore it from the copy on COS_RECOVERY ({STATE_FILE}), or boot"
                " recovery and run `cos reset`",
            ) from exc

    def active(self) -> int | None:
        for n, s in self.snapshots.items():
            if s.active:
                return n
        return None

    def held(self) -> set[int]:
        """Snapshots whose blobs the layer store keeps: the installed ones and the staged."""
        return set(self.snapshots) | ({self.staged.snapshot} if self.staged else set())


def _image_dict(image: ImageState) -> dict[str, Any]:
    d = asdict(image)
    d["boot_assessment"] = str(image.boot_assessment)
    return {k.replace("_", "-"): v for k, v in d.items()}


def _image(d: dict[str, Any]) -> ImageState:
    known = {f.name for f in fields(ImageState)}
    # Keys a newer toolkit wrote are left out, not fatal.
    kw = {k.replace("-", "_"): v for k, v in d.items() if k.replace("-", "_") in known}
    kw["boot_assessment"] = Assessment(kw.get("boot_assessment") or "")
    return ImageState(**kw)


def _staged(d: dict[str, Any]) -> Staged:
    rest = {k: v for k, v in d.items() if k != "snapshot"}
    if d.get("snapshot") is None:
        raise ValueError("staged: no snapshot")
    return Staged(snapshot=int(d["snapshot"]), image=_image(rest))


def _snapshotter(d: dict[str, Any]) -> SnapshotterState:
    kind = str(d.get("type") or SnapshotterKind.LOOP)
    return SnapshotterState(
        type=_KIND_ALIASES.get(kind) or SnapshotterKind(kind),
        max_snaps=int(d.get("max-snaps", 2)),
        fs=Filesystem(str(d.get("fs") or Filesystem.EXT4)),
    )


def _history(d: dict[str, Any]) -> HistoryEntry:
    snap = d.get("snapshot")
    return HistoryEntry(
        date=str(d.get("date", "")),
        action=str(d.get("action", "")),
        snapshot=int(snap) if snap is not None else None,
        source=str(d["source"]) if d.get("source") is not None else None,
        digest=str(d["digest"]) if d.get("digest") is not None else None,
    )


def write_state(directory: Path, state: InstallState) -> None:
    atomic_write(Path(directory) / STATE_FILE, state.to_yaml())


def read_state(directory: Path) -> InstallState | None:
    p = Path(directory) / STATE_FILE
    if not p.exists() and not p.is_symlink():
        return None
    try:
        if not p.is_file() or p.stat().st_size > MAX_STATE_BYTES:
            raise ValueError("not a regular file of a sane size")
        text = p.read_bytes().decode()
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise StateError(
            f"{p} is not a valid cos state file: {exc}",
            hint=f"restore it from the copy on COS_RECOVERY ({STATE_FILE}), or boot"
            " recovery and run `cos reset`",
        ) from exc
    return InstallState.from_yaml(text, str(p))
