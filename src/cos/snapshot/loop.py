"""Loop-image snapshots: .snapshots/<N>/snapshot.img, an ext image of the tree.

An image is never changed once committed: it is mounted read-only. build-disk makes
the first one from a directory with mkfs -d; an upgrade makes the next one on the
device itself: a sparse image file is formatted, loop-mounted, filled, checked and
shrunk to its content. A snapshot directory without a complete image (`.partial`
marker) is debris of an interrupted build and is removed by the next one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cos import run as runner
from cos.config import SnapshotterKind
from cos.disk.image import create_sparse, make_ext_image, mkfs_ext4
from cos.disk.mount import mounted
from cos.disk.plan import MIB
from cos.errors import StateError
from cos.fsutil import atomic_symlink, ceil_div, fsync_dir
from cos.log import step
from cos.oci.digest import short_digest
from cos.oci.image import LocalImage, unpack
from cos.snapshot.base import (
    ACTIVE_LINK,
    SNAPSHOTS_DIR,
    BootLocation,
    Pending,
    Snapshotter,
    is_number,
    snapshot_label,
)

IMAGE_NAME = "snapshot.img"
PARTIAL = ".partial"


def estimate_image_bytes(tar_bytes: int) -> int:
    """Room a tree whose layers' tar streams total tar_bytes needs in an ext image.

    Block rounding of small files and inode tables cost about a fifth on a typical OS
    tree; the rest is fixed metadata.
    """
    return ceil_div(int(tar_bytes * 1.25) + 64 * MIB, MIB) * MIB


@contextmanager
def image_tree(image: Path, size: int, label: str, fs: str, where: Path) -> Iterator[Path]:
    """A fresh sparse ext image of size bytes, mounted at where for the block."""
    create_sparse(image, ceil_div(size, MIB) * MIB)
    mkfs_ext4(image, label, size=size, journal=False, fs=fs, zeroed=True)
    with mounted(image, where, "loop") as tree:
        yield tree


@contextmanager
def scratch_tree(directory: Path, size: int, where: Path) -> Iterator[Path]:
    """A tree of up to size bytes on the device holding directory, gone after the
    block (a system unpacked only to be written elsewhere: a recovery image)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with image_tree(directory / IMAGE_NAME, size, "COS_SCRATCH", "ext4", where) as tree:
            yield tree
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class LoopSnapshotter(Snapshotter):
    """Snapshots as loop images under <state>/.snapshots."""

    kind = SnapshotterKind.LOOP

    def image(self, n: int) -> Path:
        return self.root / str(n) / IMAGE_NAME

    def check(self) -> None:
        def damaged(what: str, fix: str) -> StateError:
            return StateError(
                f"{self.root}: {what}", hint=f"{fix}; `cos status` shows the snapshots left"
            )

        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise damaged("not a directory", f"move {self.root} aside and reinstall or reset")
        link = self.root / ACTIVE_LINK
        if link.exists() or link.is_symlink():
            if not link.is_symlink():
                raise damaged(
                    f"{ACTIVE_LINK} is not a link",
                    f"move {link} aside; `cos rollback N` makes a snapshot active again",
                )
            head = os.readlink(link).split("/")[0]
            if not is_number(head):
                raise damaged(
                    f"{ACTIVE_LINK} points to {os.readlink(link)!r}",
                    f"remove {link}; `cos rollback N` makes a snapshot active again",
                )
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if is_number(d.name) and (d.is_symlink() or not d.is_dir()):
                raise damaged(
                    f"snapshot {d.name} is not a directory", f"move {d} out of {self.root}"
                )
            if is_number(d.name) and (d / IMAGE_NAME).is_symlink():
                raise damaged(f"snapshot {d.name}'s image is a link", f"remove {d}")

    def numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if is_number(d.name) and (d / IMAGE_NAME).is_file() and not (d / PARTIAL).exists():
                out.append(int(d.name))
        return sorted(out)

    def active(self) -> int | None:
        link = self.root / ACTIVE_LINK
        if not link.is_symlink():
            return None
        head = os.readlink(link).split("/")[0]
        return int(head) if is_number(head) else None

    def size(self, n: int) -> int:
        return self.image(n).stat().st_blocks * 512

    def boot_files(self, n: int) -> BootLocation:
        return BootLocation(image=f"{SNAPSHOTS_DIR}/{n}/{IMAGE_NAME}")

    def mounted(self, n: int, where: Path) -> AbstractContextManager[Path]:
        return mounted(self.image(n), where, "loop,ro")

    def next_number(self) -> int:
        if not self.root.is_dir():
            return 1
        used = [int(d.name) for d in self.root.iterdir() if is_number(d.name)]
        return max(used, default=0) + 1

    def estimate(self, tar_bytes: int) -> int:
        return estimate_image_bytes(tar_bytes)

    def clean_debris(self) -> list[int]:
        removed = []
        complete = set(self.numbers())  # what the backend (or a subclass) counts as whole
        for d in self.root.iterdir() if self.root.is_dir() else []:
            if is_number(d.name) and int(d.name) not in complete:
                if int(d.name) == self.active():
                    continue
                shutil.rmtree(d)
                removed.append(int(d.name))
        if removed:
            fsync_dir(self.root)
        return removed

    @contextmanager
    def start(self, image: LocalImage, size: int, workdir: Path) -> Iterator[Pending]:
        n = self.next_number()
        d = self._begin(n)
        img = d / IMAGE_NAME
        try:
            with image_tree(img, size, snapshot_label(n), self.fs, workdir / "tree") as tree:
                label = f" ({short_digest(image.digest)})" if image.digest else ""
                with step(f"Unpacking {image.ref}{label}"):
                    unpack(image, tree)
                yield Pending(n, tree)
            self._seal(img)
            self._commit(d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def from_tree(self, tree: Path) -> int:
        n = self.next_number()
        d = self._begin(n)
        try:
            # Not fsynced: a tree made this way goes into a disk image, made durable whole.
            make_ext_image(tree, d / IMAGE_NAME, snapshot_label(n), fs=self.fs)
            self._commit(d)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return n

    def _begin(self, n: int) -> Path:
        """The snapshot's directory, marked partial until its image is sealed."""
        d = self.root / str(n)
        d.mkdir(parents=True)
        (d / PARTIAL).touch()
        fsync_dir(self.root)
        return d

    def _commit(self, d: Path) -> None:
        (d / PARTIAL).unlink()
        fsync_dir(d)

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

    def _link(self, n: int) -> None:
        atomic_symlink(f"{n}/{IMAGE_NAME}", self.root / ACTIVE_LINK)

    def delete(self, n: int) -> None:
        if n == self.active():
            raise StateError(f"snapshot {n} is active and cannot be deleted")
        d = self.root / str(n)
        # Mark first: a crash halfway leaves debris the next build removes.
        (d / PARTIAL).touch()
        shutil.rmtree(d)
        fsync_dir(self.root)
