"""Finding the kernel of an image tree, the way dracut and GRUB will see it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cos.errors import ImageError
from cos.fsutil import regular_file_in_tree


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path  # path inside the tree, absolute (/boot/vmlinuz-…)
    modules: Path  # /lib/modules/<version> or /usr/lib/modules/<version>


def _version_key(v: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~]", v)]


def find_kernels(root: Path) -> list[Kernel]:
    """Kernels that have both a /boot/vmlinuz-<v> and a modules dir, newest first."""
    found: list[Kernel] = []
    boot = root / "boot"
    if not boot.is_dir():
        return []
    for vmlinuz in boot.glob("vmlinuz-*"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        for mods in (f"usr/lib/modules/{version}", f"lib/modules/{version}"):
            if (root / mods).is_dir():
                found.append(Kernel(version, Path("/boot") / vmlinuz.name, Path("/") / mods))
                break
    return sorted(found, key=lambda k: _version_key(k.version), reverse=True)


def require_kernel(root: Path, what: str) -> Kernel:
    kernels = find_kernels(root)
    if not kernels:
        raise ImageError(
            f"{what} has no kernel (no /boot/vmlinuz-<version> with matching modules)",
            hint="base the image on one that installs a kernel package, e.g. linux-image-amd64",
        )
    return kernels[0]


@dataclass(frozen=True)
class BootFiles:
    """Files taken from an image, resolved inside its tree (never the host's)."""

    vmlinuz: Path
    initrd: Path
    grub_cfg: Path
    bootargs: Path | None


def check_bootable(tree: Path, ref: object) -> BootFiles:
    """The tree must carry a kernel, an initrd and the cos boot config (cos init)."""
    require_kernel(tree, f"image {ref}")
    vmlinuz = regular_file_in_tree(tree, "/boot/vmlinuz")
    initrd = regular_file_in_tree(tree, "/boot/initrd")
    grub_cfg = regular_file_in_tree(tree, "/etc/cos/grub.cfg")
    if vmlinuz is None or initrd is None or grub_cfg is None:
        raise ImageError(
            f"image {ref} was not prepared by cos init (no /boot/initrd or /etc/cos/grub.cfg)",
            hint="add 'RUN cos init' to the Containerfile of the image",
        )
    return BootFiles(vmlinuz, initrd, grub_cfg, regular_file_in_tree(tree, "/etc/cos/bootargs.cfg"))
