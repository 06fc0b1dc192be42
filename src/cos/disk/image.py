"""Filesystems made as files or straight into a disk image at an offset.

No loop devices and no mounts: mkfs.ext4 -d populates a filesystem from a
directory, mkfs.vfat + mtools build the ESP. This is what lets build-disk run
without device-mapper or udev.
"""

from __future__ import annotations

import os
from pathlib import Path

from cos import run as runner
from cos.disk.plan import MIB, DiskPlan, sgdisk_args
from cos.fsutil import ceil_div, tree_usage

_ZERO = bytes(MIB)


def create_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def device_size(dev: Path | str) -> int:
    """Size in bytes of a block device."""
    return int(runner.run(["blockdev", "--getsize64", str(dev)]).stdout.strip())


def partition(disk: Path, plan: DiskPlan) -> None:
    runner.run(["sgdisk", *sgdisk_args(plan), str(disk)])


def mkfs_ext4(
    target: Path,
    label: str,
    *,
    size: int,
    offset: int = 0,
    source: Path | None = None,
    journal: bool = True,
    fs: str = "ext4",
    inodes: int | None = None,
    zeroed: bool = False,
) -> None:
    """Make an ext2/ext4 filesystem of size bytes in target at offset, from source.

    zeroed: target is a new sparse file, all zeros already. mkfs then marks the inode
    tables initialised instead of leaving them to the kernel, which otherwise zeroes
    them in the background after the first read-write mount: on a disk built here,
    that is the first boot, and under emulation the writes and their journal commits
    cost seconds of it."""
    opts = [f"offset={offset}", "lazy_itable_init=1", "nodiscard", "root_owner=0:0"]
    if zeroed:
        opts.append("assume_storage_prezeroed=1")
    argv = ["mkfs." + fs, "-F", "-q", "-L", label, "-E", ",".join(opts), "-m", "0"]
    if fs == "ext4" and not journal:
        argv += ["-O", "^has_journal"]
    if inodes is not None:
        argv += ["-N", str(inodes)]
    if source is not None:
        argv += ["-d", str(source)]
    argv += [str(target), f"{size // 1024}k"]
    runner.run(argv)


def copy_into(disk: Path, src: Path, offset: int, sparse: bool = True) -> None:
    """Copy src into disk at offset. sparse skips zero blocks: a new image file is all
    zeros already; a used device is not, so there every block is written."""
    with open(src, "rb") as fi, open(disk, "r+b") as fo:
        pos = offset
        while chunk := fi.read(MIB):
            if not sparse or chunk != _ZERO[: len(chunk)]:
                fo.seek(pos)
                fo.write(chunk)
            pos += len(chunk)
        fo.flush()
        os.fsync(fo.fileno())


def mkfs_vfat(image: Path, label: str, size: int, volume_id: str, files: dict[str, Path]) -> None:
    """Make a FAT32 image file and copy files (dest path → source) into it."""
    create_sparse(image, size)
    runner.run(["mkfs.vfat", "-F", "32", "-n", label, "-i", volume_id, str(image)])
    dirs: set[str] = set()
    for dest in files:
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs, key=lambda d: d.count("/")):
        runner.run(["mmd", "-i", str(image), f"::/{d}"], env={"MTOOLS_SKIP_CHECK": "1"})
    for dest, src in files.items():
        if src.is_dir():
            runner.run(
                ["mcopy", "-s", "-Q", "-i", str(image), str(src), f"::/{dest.strip('/')}"],
                env={"MTOOLS_SKIP_CHECK": "1"},
            )
        else:
            runner.run(
                ["mcopy", "-Q", "-i", str(image), str(src), f"::/{dest.strip('/')}"],
                env={"MTOOLS_SKIP_CHECK": "1"},
            )


def mksquashfs(source: Path, image: Path) -> None:
    # zstd level 3: 10x faster than the default level for a ~10% larger image.
    runner.run(
        [
            "mksquashfs",
            str(source),
            str(image),
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
            "-noappend",
            "-quiet",
            "-no-progress",
        ]
    )


EXT_IMAGE_HEADROOM = 128 * MIB


def ext_image_size(tree: Path) -> tuple[int, int]:
    """(bytes, inodes) an ext image of tree needs: blocks + inode tables + headroom."""
    usage = tree_usage(tree)
    inodes = int(usage.entries * 1.2) + 4096
    size = int(usage.bytes * 1.05) + inodes * 256 + EXT_IMAGE_HEADROOM
    return ceil_div(size, MIB) * MIB, inodes


def make_ext_image(tree: Path, image: Path, label: str, fs: str = "ext4") -> int:
    """An ext image file holding tree (mkfs -d, no journal: it is mounted read-only)."""
    size, inodes = ext_image_size(tree)
    image.parent.mkdir(parents=True, exist_ok=True)
    create_sparse(image, size)
    mkfs_ext4(
        image, label, size=size, source=tree, journal=False, fs=fs, inodes=inodes, zeroed=True
    )
    return size
