"""COS_OEM as an installation starts it: an empty boot menu and the user's
cloud-configs (readable by root only: they may carry passwords and keys)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cos.boot import assessment, grubenv


def cloud_init_names(files: list[Path]) -> list[str]:
    if len(files) == 1:
        return ["90_custom.yaml"]
    return [f"90_custom-{i}.yaml" for i in range(1, len(files) + 1)]


def write_oem(oemdir: Path, cloud_init: list[Path]) -> None:
    """A fresh boot env (empty snapshot menu) and the --cloud-init files, private."""
    oemdir.mkdir(parents=True, exist_ok=True)
    grubenv.write(oemdir / assessment.ENV_FILE, {assessment.PASSIVE: ""})
    for src, name in zip(cloud_init, cloud_init_names(cloud_init), strict=True):
        shutil.copyfile(src, oemdir / name)
        (oemdir / name).chmod(0o600)
