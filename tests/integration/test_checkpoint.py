"""fsutil.checkpoint on a real ext4 volume: what a switch renamed is in place, where
GRUB (which never replays the journal) reads it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.boot import grubenv
from cos.fsutil import atomic_symlink, checkpoint, fsync_dir
from tests.conftest import need

pytestmark = pytest.mark.integration


def _in_place(image: Path, path: str) -> str:
    """What a reader without the journal finds at path (debugfs reads the blocks)."""
    res = subprocess.run(
        ["debugfs", "-R", f"stat {path}", str(image)], capture_output=True, text=True
    )
    return res.stdout


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A fresh journalled ext4 volume, mounted: (its image, its mount point)."""
    need("mkfs.ext4", "debugfs", root=True)
    image, mnt = tmp_path / "vol.img", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        yield image, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_renamed_link_is_in_place_after_a_checkpoint(ext4: tuple[Path, Path]) -> None:
    image, mnt = ext4
    (mnt / "2").mkdir()
    os.symlink("2", mnt / ".active.tmp")
    os.replace(mnt / ".active.tmp", mnt / "active")
    fsync_dir(mnt)  # durable: in the journal
    assert checkpoint(mnt)
    assert "Type: symlink" in _in_place(image, "/active")
    assert "Type: directory" in _in_place(image, "/2")


def test_the_writers_grub_reads_through_leave_their_blocks_in_place(
    ext4: tuple[Path, Path],
) -> None:
    """atomic_symlink (the active and recovery links) and grubenv.write checkpoint
    themselves: no caller has to remember it."""
    image, mnt = ext4
    (mnt / "3").mkdir()
    atomic_symlink("3", mnt / "active")
    grubenv.write(mnt / "grubenv", {"cos_trial": "3"})
    assert "Type: symlink" in _in_place(image, "/active")
    assert "Type: directory" in _in_place(image, "/3")
    dumped = subprocess.run(
        ["debugfs", "-R", "cat /grubenv", str(image)], capture_output=True, check=True
    ).stdout
    assert b"cos_trial=3\n" in dumped and len(dumped) == grubenv.BLOCK_SIZE


def test_elsewhere_it_is_a_no_op(tmp_path: Path) -> None:
    assert not checkpoint(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    # The fast tier's tmp directory is rarely ext4 with a journal, and never an error.
    checkpoint(tmp_path / "f")
