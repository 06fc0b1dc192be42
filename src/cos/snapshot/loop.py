"""Loop-image snapshots: .snapshots/<N>/snapshot.img, an ext image of the tree.

The image is sized to the tree plus headroom and made with mkfs -d, without a
journal: it is mounted read-only and never changed after it is made.
"""

from __future__ import annotations

from pathlib import Path

from cos.disk.image import mkfs_ext4
from cos.disk.plan import MIB
from cos.fsutil import tree_usage

SNAPSHOTS_DIR = ".snapshots"
IMAGE_NAME = "snapshot.img"
ACTIVE_LINK = "active"
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
