"""cos mount: apply the immutable layout (run by the initrd inside the new root)."""

from __future__ import annotations

from pathlib import Path

from cos.config import Config, Labels
from cos.system.layout import apply_layout


def mount_layout(
    cfg: Config,
    mode: str,
    root: Path = Path("/"),
    oem_label: str | None = None,
    persistent_label: str | None = None,
) -> list[str]:
    """Labels given on the kernel command line (by GRUB, from the disk) win over config:
    the disk, not the image, knows how its partitions are labelled."""
    labels = Labels(
        efi=cfg.labels.efi,
        oem=oem_label or cfg.labels.oem,
        recovery=cfg.labels.recovery,
        state=cfg.labels.state,
        persistent=persistent_label or cfg.labels.persistent,
    )
    return apply_layout(mode, cfg.layout, labels, root=root)
