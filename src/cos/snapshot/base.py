"""The snapshotter seam: how a snapshot is stored is a backend's business; how the
machine switches between snapshots is written once, here.

A backend stores numbered snapshots on COS_STATE. It builds a new one in a
transaction (`start`: the block fills a mounted tree; leaving it commits, an
exception aborts and leaves nothing behind), makes one from a finished tree
(`from_tree`, build-disk), lists, deletes and sizes them, and names the file the
boot chain reads (`boot_files`). What boots is chosen by one `active` link that a
backend renames atomically (`_link`).

`activate` is the one crash-ordered switch, used by every action that changes what
boots (upgrade, rollback, boot assessment, install, reset, build-disk). Each write
is durable before the next starts, so a crash at any instant boots either the old
active snapshot or the complete new one:

1. state.yaml lists the new snapshot (not active): nothing points at it yet;
2. the grubenv (COS_OEM) gets the menu of passive snapshots and, for an upgrade,
   the trial: snapshot n, its boot attempts and the fallback. Written before the
   switch, so a crash right after it still has a fallback ready;
3. the `active` link is renamed to n: the switch;
4. state.yaml marks n active and records why.

GRUB reads COS_STATE and COS_OEM without replaying their journals, so each write it
reads is also checkpointed (`fsutil.checkpoint`: written to its blocks' own places,
not only to the journal) before the next starts: by `grubenv.write` and
`fsutil.atomic_symlink` themselves, and here before step 2, as the grubenv on COS_OEM
names files on COS_STATE.

A crash between 3 and 4 leaves state.yaml one step behind the link: readers trust
the link (`active()`), and the next action rewrites state.yaml.

A staged snapshot (`cos upgrade --download-only`) is complete but offered by no menu
and picked by no rollback (`bootable`). Switching to it is the same four writes; its
staged record goes only in 4, so a crash before the link leaves it staged (and
`cos upgrade --apply` can run again), one after it leaves it active.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cos.boot import assessment
from cos.config import Filesystem, SnapshotterKind
from cos.errors import StateError
from cos.fsutil import checkpoint
from cos.oci.image import LocalImage
from cos.system.state import ImageState, InstallState, Staged, write_state

SNAPSHOTS_DIR = ".snapshots"
ACTIVE_LINK = "active"


def snapshot_label(n: int) -> str:
    return f"COS_SNAP{n}"


def is_number(name: str) -> bool:
    """A snapshot number as cos writes it: ASCII digits only (int() takes others)."""
    return name.isascii() and name.isdecimal()


@dataclass(frozen=True)
class Pending:
    """A snapshot being built: its number and the mounted tree to fill."""

    number: int
    tree: Path


@dataclass(frozen=True)
class Trial:
    """A switch that GRUB tries `attempts` times before it boots `fallback` again."""

    fallback: int | None
    attempts: int


@dataclass(frozen=True)
class BootLocation:
    """Where the boot chain finds a snapshot: `image` relative to COS_STATE (the
    kernel command line's cos.image=), kernel and initrd as paths inside it."""

    image: str
    kernel: str = "/boot/vmlinuz"
    initrd: str = "/boot/initrd"


class Snapshotter(ABC):
    """Numbered snapshots on COS_STATE, one of them active."""

    kind: ClassVar[SnapshotterKind]
    tools: ClassVar[tuple[str, ...]] = ()  # beyond what every action needs

    def __init__(self, state_dir: Path, fs: Filesystem = Filesystem.EXT4):
        self.state = Path(state_dir)
        self.root = self.state / SNAPSHOTS_DIR
        self.fs = fs

    # -- what is there -----------------------------------------------------------
    @abstractmethod
    def check(self) -> None:
        """Refuse (StateError with a repair hint) a snapshots dir cos did not write, before
        an action reads or writes anything there."""

    @abstractmethod
    def numbers(self) -> list[int]:
        """Numbers of complete snapshots, oldest first."""

    @abstractmethod
    def active(self) -> int | None:
        """The snapshot the `active` link points to (what boots by default)."""

    @abstractmethod
    def size(self, n: int) -> int:
        """Bytes snapshot n occupies on the device (freed when it is deleted)."""

    def total_bytes(self) -> int:
        """Bytes all snapshots occupy together, shared content counted once."""
        return sum(self.size(n) for n in self.numbers())

    @abstractmethod
    def boot_files(self, n: int) -> BootLocation: ...

    @abstractmethod
    def mounted(self, n: int, where: Path) -> AbstractContextManager[Path]:
        """Snapshot n's tree, read-only, at where for the time of the block."""

    def staged(self, state: InstallState | None) -> Staged | None:
        """The staged snapshot: state.yaml's record, when its snapshot is complete and not
        active (a record left by a build or a switch cut short stages nothing)."""
        s = state.staged if state is not None else None
        if s is None or s.snapshot not in self.numbers() or s.snapshot == self.active():
            return None
        return s

    def bootable(self, state: InstallState | None) -> list[int]:
        """Snapshots a boot menu may offer and a rollback may pick: all complete ones but
        the staged one, which boots only through `cos upgrade --apply`."""
        s = self.staged(state)
        return [n for n in self.numbers() if s is None or n != s.snapshot]

    # -- making and removing -----------------------------------------------------
    @abstractmethod
    def next_number(self) -> int: ...

    @abstractmethod
    def estimate(self, tar_bytes: int) -> int:
        """Bytes a new snapshot of layers whose tar streams total tar_bytes takes."""

    def has_layer(self, diff_id: str) -> bool:
        """Whether a layer's content is kept on the device in this backend's own form
        (then its compressed blob need not be)."""
        return False

    def intact_layers(self, diff_ids: Sequence[str | None]) -> set[str]:
        """Of diff_ids, the layers kept here and checked whole: an upgrade need not
        fetch them. A damaged one is not in it, so it is fetched and made again."""
        return set()

    def new_bytes(self, layers: Sequence[tuple[str | None, int]]) -> int:
        """Bytes a new snapshot of an image with these layers ((diff_id, tar bytes),
        base first) writes: what the space check before a build counts."""
        return self.estimate(sum(n for _, n in layers))

    @abstractmethod
    def start(self, image: LocalImage, size: int, workdir: Path) -> AbstractContextManager[Pending]:
        """Begin snapshot next_number() of image: the block gets its tree, unpacked and
        writable (checks, hooks); a normal exit commits it (sealed, durable), an
        exception aborts it (nothing left)."""

    @abstractmethod
    def from_tree(self, tree: Path) -> int:
        """Commit a finished tree as the next snapshot (build-disk: no device)."""

    @abstractmethod
    def delete(self, n: int) -> None: ...

    @abstractmethod
    def clean_debris(self) -> list[int]:
        """Remove what an interrupted build left; returns the numbers removed."""

    @abstractmethod
    def _link(self, n: int) -> None:
        """Point the `active` link at n: one atomic rename, made durable."""

    # -- the switch --------------------------------------------------------------
    def activate(
        self,
        n: int,
        *,
        state: InstallState,
        oem_dir: Path,
        reason: str,
        passive: Sequence[int],
        image: ImageState | None = None,
        trial: Trial | None = None,
    ) -> None:
        """Make snapshot n the one that boots, in the order the module docstring
        argues. image is n's record when state.yaml does not list n yet; passive is
        the menu of other snapshots GRUB offers; trial puts n on probation."""
        if n not in self.numbers():
            raise StateError(f"snapshot {n} does not exist or is incomplete")
        if image is not None:
            state.snapshots[n] = image
            write_state(self.state, state)
        staged = self.staged(state)
        menu = [k for k in passive if k != n and (staged is None or k != staged.snapshot)]
        # GRUB reads COS_STATE without its journal: n's files are in place before
        # the grubenv (another filesystem, checkpointed by its writer) names n.
        checkpoint(self.root)
        if trial is not None:
            assessment.start_trial(oem_dir, n, trial.fallback, trial.attempts, menu)
        else:
            assessment.end_trial(oem_dir, menu)
        self._link(n)
        for k, s in state.snapshots.items():
            s.active = k == n
        if state.staged is not None and state.staged.snapshot == n:
            state.staged = None
        state.record(reason, n, state.snapshots.get(n))
        write_state(self.state, state)
