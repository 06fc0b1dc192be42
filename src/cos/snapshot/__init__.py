"""Snapshots: bootable system trees, numbered, one of them active.

`base.Snapshotter` is the interface and holds the one crash-ordered switch
(`activate`); backends live beside it and are listed in BACKENDS. Actions never
construct a backend: they open the one state.yaml names (`open_snapshotter`) or, for
a new installation, the one the config asks for (`new_snapshotter`).
"""

from __future__ import annotations

from pathlib import Path

from cos.config import Filesystem
from cos.snapshot.base import Snapshotter
from cos.snapshot.loop import LoopSnapshotter
from cos.system.state import InstallState, SnapshotterKind

BACKENDS: dict[SnapshotterKind, type[Snapshotter]] = {
    SnapshotterKind.LOOP: LoopSnapshotter,
}


def new_snapshotter(
    state_dir: Path, fs: Filesystem, kind: SnapshotterKind = SnapshotterKind.LOOP
) -> Snapshotter:
    """The backend of a new installation (build-disk, install, reset)."""
    return BACKENDS[kind](state_dir, fs)


def open_snapshotter(
    state_dir: Path, state: InstallState | None, fs: Filesystem, *, check: bool = True
) -> Snapshotter:
    """The backend state.yaml records for this installation (loop when there is
    none), checked for damage unless the caller reports it itself (status); new
    snapshots get the config's filesystem fs."""
    kind = state.snapshotter.type if state is not None else SnapshotterKind.LOOP
    snaps = BACKENDS[kind](state_dir, fs)
    if check:
        snaps.check()
    return snaps
