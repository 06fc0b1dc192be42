"""cos init: make an image bootable the cos way (run inside the image build)."""

from __future__ import annotations

from pathlib import Path

from cos.errors import StateError, UsageError
from cos.log import log, step
from cos.system.features import (
    FEATURES,
    check_prerequisites,
    image_build_reason,
    installing,
    rebuild_initrd,
)


def init_image(names: list[str], force: bool = False, root: Path = Path("/")) -> list[str]:
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise UsageError(
            f"unknown feature: {', '.join(unknown)}",
            hint=f"available features: {', '.join(FEATURES)}",
        )
    if root == Path("/") and not force:
        if any(Path("/run/cos").glob("*_mode")):
            raise StateError(
                "cos init changes an image, and this is a running cos system",
                hint="run it in a Containerfile (RUN cos init); --force overrides",
            )
        if image_build_reason() is None:
            raise StateError(
                "cos init must run inside an image build, not on a host",
                hint="run it in a Containerfile (RUN cos init); --force overrides",
            )
    selected = names or list(FEATURES)
    check_prerequisites(root, selected)
    with installing():  # a failure puts back every file it changed
        for name in selected:
            with step(f"Installing feature {name}: {FEATURES[name].summary}"):
                FEATURES[name].install(root)
        if "immutable-rootfs" in selected:
            rebuild_initrd(root)
    log.info("cos init: installed %s", ", ".join(selected))
    return selected
