"""fsutil.checkpoint on a real ext4 volume: what a switch renamed is in place, where
GRUB (which never replays the journal) reads it."""

from __future__ import annotations

import os
import subprocess
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


def test_a_renamed_link_is_in_place_after_a_checkpoint(tmp_path: Path) -> None:
    need("mkfs.ext4", "debugfs", root=True)
    image, mnt = tmp_path / "state.img", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        (mnt / "2").mkdir()
        os.symlink("2", mnt / ".active.tmp")
        os.replace(mnt / ".active.tmp", mnt / "active")
        fsync_dir(mnt)  # durable: in the journal
        assert checkpoint(mnt)
        assert "Type: symlink" in _in_place(image, "/active")
        assert "Type: directory" in _in_place(image, "/2")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_the_writers_grub_reads_through_leave_their_blocks_in_place(tmp_path: Path) -> None:
    """atomic_symlink (the active and recovery links) and grubenv.write checkpoint
    themselves: no caller has to remember it."""
    need("mkfs.ext4", "debugfs", root=True)
    image, mnt = tmp_path / "oem.img", tmp_path / "mnt"
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        (mnt / "3").mkdir()
        atomic_symlink("3", mnt / "active")
        grubenv.write(mnt / "grubenv", {"cos_trial": "3"})
        assert "Type: symlink" in _in_place(image, "/active")
        assert "Type: directory" in _in_place(image, "/3")
        dumped = subprocess.run(
            ["debugfs", "-R", "cat /grubenv", str(image)], capture_output=True, check=True
        ).stdout
        assert b"cos_trial=3\n" in dumped and len(dumped) == grubenv.BLOCK_SIZE
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_elsewhere_it_is_a_no_op(tmp_path: Path) -> None:
    assert not checkpoint(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    # The fast tier's tmp directory is rarely ext4 with a journal, and never an error.
    checkpoint(tmp_path / "f")
