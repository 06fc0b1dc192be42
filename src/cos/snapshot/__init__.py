"""Snapshots: bootable system trees, numbered, one of them active.

`base.Snapshotter` is the interface and holds the one crash-ordered switch
(`activate`); backends live beside it and are listed in BACKENDS. Actions never
construct a backend: they open the one state.yaml names (`open_snapshotter`) or, for
a new installation, the one the config asks for (`new_snapshotter`).
"""

from __future__ import annotations

from pathlib import Path

from cos.config import Filesystem, SnapshotterKind
from cos.snapshot.base import Snapshotter
from cos.snapshot.layers import LayersSnapshotter
from cos.snapshot.loop import LoopSnapshotter
from cos.system.state import InstallState

BACKENDS: dict[SnapshotterKind, type[Snapshotter]] = {
    SnapshotterKind.LOOP: LoopSnapshotter,
    SnapshotterKind.LAYERS: LayersSnapshotter,
}
# What a backend can take over: its reader knows the other's snapshots, so an upgrade
# moves the installation over and the old snapshots keep booting.
MIGRATES = {(SnapshotterKind.LOOP, SnapshotterKind.LAYERS)}


def new_snapshotter(state_dir: Path, fs: Filesystem, kind: SnapshotterKind) -> Snapshotter:
    """The backend of a new installation (build-disk, install, reset)."""
    return BACKENDS[kind](state_dir, fs)


def open_snapshotter(
    state_dir: Path,
    state: InstallState | None,
    fs: Filesystem,
    *,
    check: bool = True,
    want: SnapshotterKind | None = None,
) -> Snapshotter:
    """The backend state.yaml records for this installation (loop when there is
    none), checked for damage unless the caller reports it itself (status); new
    snapshots get the config's filesystem fs. With want (an upgrade: the config's
    snapshotter), an installation the wanted backend can take over moves to it; the
    caller records that in state.yaml with its switch."""
    kind = state.snapshotter.type if state is not None else SnapshotterKind.LOOP
    if want is not None and (kind, want) in MIGRATES:
        kind = want
    snaps = BACKENDS[kind](state_dir, fs)
    if check:
        snaps.check()
    return snaps
