"""The recovery system on COS_RECOVERY: an image of a tree plus the kernel, initrd and
boot arguments GRUB loads for the recovery entry, replaced in one atomic step."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cos.config import Filesystem
from cos.disk import image as diskimg
from cos.fsutil import atomic_symlink, fsync_dir
from cos.system.kernel import BootFiles

RECOVERY_LABEL = "COS_SYSTEM"


def write_recovery(
    tree: Path, boot: BootFiles, recdir: Path, fs: Filesystem, generation: int = 1
) -> int:
    """recovery.img (squashfs or ext image of tree) + kernel, initrd, bootargs.

    They go into recdir/boot.<generation>/, made durable, and then the `boot` link is
    renamed onto that directory: GRUB and the initrd read `/boot/…` through it, so a
    recovery system is replaced in one atomic step. Returns the bytes written.
    """
    gen = recdir / f"boot.{generation}"
    gen.mkdir(parents=True, exist_ok=True)
    if fs == Filesystem.SQUASHFS:
        diskimg.mksquashfs(tree, gen / "recovery.img")
    else:
        diskimg.make_ext_image(tree, gen / "recovery.img", RECOVERY_LABEL, fs=fs)
    shutil.copyfile(boot.vmlinuz, gen / "vmlinuz")
    shutil.copyfile(boot.initrd, gen / "initrd")
    if boot.bootargs is not None:
        shutil.copyfile(boot.bootargs, gen / "bootargs.cfg")
    total = 0
    for f in gen.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        total += f.stat().st_size
    fsync_dir(gen)
    atomic_symlink(gen.name, recdir / "boot")
    return total


def recovery_generations(recdir: Path) -> list[int]:
    return sorted(
        int(d.name.split(".", 1)[1])
        for d in recdir.glob("boot.*")
        if d.is_dir() and d.name.split(".", 1)[1].isdigit()
    )
