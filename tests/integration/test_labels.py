"""Labels on two disks: a second installed disk attached to a machine carries the same
COS_* labels. cos takes the partition on the disk it booted from, and refuses when
nothing tells them apart (cos.disk.mounts.find_device)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.config import Labels, Layout
from cos.disk.mounts import AmbiguousLabel, disk_of, find_device
from cos.system.layout import apply_layout
from tests.conftest import need
from tests.integration.test_layout_mount import _mounts_below, _umount_all

pytestmark = pytest.mark.integration


def _disk(path: Path, labels: tuple[str, ...]) -> str:
    """A partitioned loop disk, partition i formatted with labels[i - 1]."""
    subprocess.run(["truncate", "-s", "128M", str(path)], check=True)
    argv = ["sgdisk"]
    for i in range(1, len(labels) + 1):
        argv.append(f"--new={i}:0:+32M")
    subprocess.run([*argv, str(path)], check=True, capture_output=True)
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["partx", "-a", loop], check=False, capture_output=True)
    for i, label in enumerate(labels, 1):
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, f"{loop}p{i}"], check=True)
    return loop


@pytest.fixture
def two_disks(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(this disk, the other disk, tag): both carry <tag>_OEM and <tag>_PER, only this
    one <tag>_STATE."""
    need("sgdisk", "partx", "losetup", "mkfs.ext4", "blkid", root=True)
    tag = "T" + secrets.token_hex(3).upper()
    loops: list[str] = []
    try:
        loops.append(_disk(tmp_path / "a.img", (f"{tag}_STATE", f"{tag}_OEM", f"{tag}_PER")))
        loops.append(_disk(tmp_path / "b.img", (f"{tag}_OTHER", f"{tag}_OEM", f"{tag}_PER")))
        yield loops[0], loops[1], tag
    finally:
        for loop in loops:
            subprocess.run(["partx", "-d", loop], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", loop], check=False)


def test_the_partition_on_this_disk_is_taken_else_refused(two_disks: tuple[str, str, str]) -> None:
    mine, other, tag = two_disks
    assert disk_of(f"{mine}p2") == Path(mine).name and disk_of(mine) == Path(mine).name
    assert find_device(f"{tag}_STATE") == f"{mine}p1"
    assert find_device(f"{tag}_OEM", near=f"{mine}p1") == f"{mine}p2"
    assert find_device(f"{tag}_OEM", near=f"{other}p1") == f"{other}p2"
    with pytest.raises(AmbiguousLabel) as exc:
        find_device(f"{tag}_OEM")
    assert exc.value.devices == sorted([f"{mine}p2", f"{other}p2"])
    assert "several devices" in exc.value.message and "detach" in exc.value.hint
    with pytest.raises(AmbiguousLabel):  # near a disk that has neither
        find_device(f"{tag}_PER", near="/dev/null")
    assert find_device(f"{tag}_NONE", timeout=0.3) is None


def test_the_boot_layout_mounts_no_volume_it_cannot_tell_apart(
    two_disks: tuple[str, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, tag = two_disks
    root = tmp_path / "sysroot"
    for d in ("etc", "var/log", "root", "oem", "usr/local", "run"):
        (root / d).mkdir(parents=True)
    labels = Labels(oem=f"{tag}_OEM", persistent=f"{tag}_PER")
    try:
        # no state partition mounted below root: nothing says which disk is this one
        done = apply_layout("active", Layout(), labels, root=root, device_timeout=0.5)
        assert "/oem" not in done and "/usr/local" not in done and "/etc" in done
        assert not any(m.endswith(("/oem", "/usr/local")) for m in _mounts_below(root))
        assert "several devices" in caplog.text and "not mounted" in caplog.text
    finally:
        _umount_all(root)
