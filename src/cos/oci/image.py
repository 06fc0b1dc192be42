"""An image held locally (an OCI layout, or a tree for dir:) and unpacking it.

Layers are applied by cos's own unpacker (cos.oci.unpack), which checks every digest
while streaming and never writes outside the target. The digest recorded is the
registry's manifest digest, the one signatures refer to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.errors import ImageError, ToolError
from cos.oci.reference import ImageRef, Transport
from cos.oci.unpack import unpack_image


@dataclass(frozen=True)
class LocalImage:
    ref: ImageRef  # what the user asked for
    layout: Path  # OCI layout holding it (for dir: the tree itself)
    tag: str  # tag inside the layout ("" for dir:)
    digest: str  # manifest digest ("" for dir:, a tree has none)
    # Where layer blobs no one keeps were fetched (RAM), when not in the layout itself.
    spool: Path | None = None


def unpack(image: LocalImage, dest: Path) -> None:
    """Apply the layers of image to an empty directory dest (must not exist)."""
    if image.ref.transport == Transport.DIR:
        # Already a tree: copied with owners, modes, links, xattrs and hardlinks.
        dest.mkdir(mode=0o755, exist_ok=os.path.ismount(dest))  # an empty filesystem
        try:
            runner.run(["cp", "-a", f"{image.layout}/.", str(dest)])
        except ToolError as exc:
            raise ImageError(f"copying {image.ref} failed: {exc}") from exc
        return
    unpack_image(image.layout, image.digest, dest)
