"""fsutil.checkpoint on a real ext4 volume: what a switch renamed is in place, where
GRUB (which never replays the journal) reads it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cos.fsutil import checkpoint, fsync_dir
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


def test_elsewhere_it_is_a_no_op(tmp_path: Path) -> None:
    assert not checkpoint(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    # The fast tier's tmp directory is rarely ext4 with a journal, and never an error.
    checkpoint(tmp_path / "f")
