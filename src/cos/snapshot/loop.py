"""Loop-image snapshots: .snapshots/<N>/snapshot.img, an ext image of the tree.

An image is never changed once committed: it is mounted read-only. build-disk makes
the first one from a directory with mkfs -d; an upgrade makes the next one on the
device itself: a sparse image file is formatted, loop-mounted, filled, checked and
shrunk to its content, and only then does the `active` link move to it (one rename).
A snapshot directory without a complete image (`.partial` marker) is debris of an
interrupted upgrade and is removed by the next one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.disk.image import mkfs_ext4
from cos.disk.mount import mounted
from cos.disk.plan import MIB
from cos.errors import StateError
from cos.fsutil import atomic_symlink, fsync_dir, tree_usage

SNAPSHOTS_DIR = ".snapshots"
IMAGE_NAME = "snapshot.img"
ACTIVE_LINK = "active"
PARTIAL = ".partial"
HEADROOM = 128 * MIB


def snapshot_label(n: int) -> str:
    return f"COS_SNAP{n}"


def image_size_for(tree: Path) -> tuple[int, int]:
    """(bytes, inodes) for an ext image of tree: blocks + inode tables + headroom."""
    usage = tree_usage(tree)
    inodes = int(usage.entries * 1.2) + 4096
    size = int(usage.bytes * 1.05) + inodes * 256 + HEADROOM
    return -(-size // MIB) * MIB, inodes


def make_snapshot_image(tree: Path, image: Path, label: str, fs: str = "ext4") -> int:
    size, inodes = image_size_for(tree)
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    mkfs_ext4(image, label, size=size, source=tree, journal=False, fs=fs, inodes=inodes)
    return size


def estimate_image_bytes(tar_bytes: int) -> int:
    """Room a tree whose layers' tar streams total tar_bytes needs in an ext image.

    Block rounding of small files and inode tables cost about a fifth on a typical OS
    tree; the rest is fixed metadata.
    """
    return -(-(int(tar_bytes * 1.25) + 64 * MIB) // MIB) * MIB


@dataclass
class Pending:
    """A snapshot being built: its number, image file and mounted tree."""

    number: int
    image: Path
    tree: Path


class LoopSnapshotter:
    """Snapshots as loop images under <state>/.snapshots (start, commit, abort, list, delete)."""

    def __init__(self, state_dir: Path, fs: str = "ext4"):
        self.state = Path(state_dir)
        self.root = self.state / SNAPSHOTS_DIR
        self.fs = fs

    def image(self, n: int) -> Path:
        return self.root / str(n) / IMAGE_NAME

    def numbers(self) -> list[int]:
        """Numbers of complete snapshots, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if d.name.isdigit() and (d / IMAGE_NAME).is_file() and not (d / PARTIAL).exists():
                out.append(int(d.name))
        return sorted(out)

    def active(self) -> int | None:
        link = self.root / ACTIVE_LINK
        if not link.is_symlink():
            return None
        head = os.readlink(link).split("/")[0]
        return int(head) if head.isdigit() else None

    def next_number(self) -> int:
        if not self.root.is_dir():
            return 1
        used = [int(d.name) for d in self.root.iterdir() if d.name.isdigit()]
        return max(used, default=0) + 1

    def clean_debris(self) -> list[int]:
        """Remove directories of snapshots that never completed."""
        removed = []
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if d.name.isdigit() and ((d / PARTIAL).exists() or not (d / IMAGE_NAME).is_file()):
                if int(d.name) == self.active():
                    continue
                shutil.rmtree(d)
                removed.append(int(d.name))
        if removed:
            fsync_dir(self.root)
        return removed

    @contextmanager
    def start(self, size: int, workdir: Path) -> Iterator[Pending]:
        """Make an empty image of size bytes (sparse) and mount it at workdir/tree.

        The block hands out the mounted tree; leaving it normally commits (unmount,
        fsck, shrink, fsync), an exception aborts (unmount, remove).
        """
        n = self.next_number()
        d = self.root / str(n)
        d.mkdir(parents=True)
        (d / PARTIAL).touch()
        fsync_dir(self.root)
        img = d / IMAGE_NAME
        pending = Pending(n, img, workdir / "tree")
        try:
            with open(img, "wb") as f:
                f.truncate(-(-size // MIB) * MIB)
            mkfs_ext4(img, snapshot_label(n), size=size, journal=False, fs=self.fs)
            with mounted(img, pending.tree, "loop"):
                yield pending
            self._seal(img)
            (d / PARTIAL).unlink()
            fsync_dir(d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def _seal(self, img: Path) -> None:
        """Check the image and shrink it to its content: it is never written again."""
        runner.run(["e2fsck", "-fy", str(img)], check=False)
        runner.run(["e2fsck", "-fn", str(img)])  # clean now, or the snapshot is refused
        runner.run(["resize2fs", "-M", str(img)])
        out = runner.run(["dumpe2fs", "-h", str(img)]).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in out.splitlines())
        )
        blocks, bsize = int(fields["Block count"]), int(fields["Block size"])
        with open(img, "r+b") as f:
            f.truncate(blocks * bsize)
            os.fsync(f.fileno())

    def switch(self, n: int) -> None:
        """Make n the active snapshot: one atomic rename of the link, then fsync."""
        if n not in self.numbers():
            raise StateError(f"snapshot {n} does not exist or is incomplete")
        atomic_symlink(f"{n}/{IMAGE_NAME}", self.root / ACTIVE_LINK)

    def delete(self, n: int) -> None:
        if n == self.active():
            raise StateError(f"snapshot {n} is active and cannot be deleted")
        d = self.root / str(n)
        # Mark first: a crash halfway leaves debris the next upgrade removes.
        (d / PARTIAL).touch()
        shutil.rmtree(d)
        fsync_dir(self.root)

    def size(self, n: int) -> int:
        return self.image(n).stat().st_blocks * 512
