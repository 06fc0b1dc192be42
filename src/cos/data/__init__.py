"""Package data: dracut module, systemd units, GRUB config (installed by `cos init`)."""

from __future__ import annotations

from importlib import resources
from importlib.abc import Traversable


def data_path(*parts: str) -> Traversable:
    node = resources.files("cos.data")
    for p in parts:
        node = node / p
    return node
