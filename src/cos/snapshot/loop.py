"""Loop-image snapshots: .snapshots/<N>/snapshot.img, an ext image of the tree.

The image is sized to the tree plus headroom and made with mkfs -d, without a
journal: it is mounted read-only and never changed after it is made.
"""

from __future__ import annotations

from pathlib import Path

from cos.disk.image import mkfs_ext4
from cos.disk.plan import MIB
from cos.fsutil import dir_size

SNAPSHOTS_DIR = ".snapshots"
IMAGE_NAME = "snapshot.img"
ACTIVE_LINK = "active"
HEADROOM = 128 * MIB


def snapshot_label(n: int) -> str:
    return f"COS_SNAP{n}"


def image_size_for(tree: Path) -> int:
    """Bytes for an ext image of tree: content + ~12% metadata + headroom, MiB aligned."""
    raw = dir_size(tree)
    size = int(raw * 1.12) + HEADROOM
    return -(-size // MIB) * MIB


def make_snapshot_image(tree: Path, image: Path, n: int, fs: str = "ext4") -> int:
    size = image_size_for(tree)
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    mkfs_ext4(image, snapshot_label(n), size=size, source=tree, journal=False, fs=fs)
    return size
