"""How `cos mount` stacks its overlays on a snapshot made of layers."""

from __future__ import annotations

import re
from pathlib import Path

from cos.config import Layout
from cos.data import data_path
from cos.system.layout import LAYERS_RUN, OVERLAY_BASE, PERSISTENT_STATE_DIR, stack_lowers


def test_stack_lowers_follows_what_overlayfs_shows(tmp_path: Path) -> None:
    """The layers' own directories an overlay of /etc stacks: those of the layers that
    have etc as a directory, down to the first layer that hides the rest."""
    top, mid, low, base = (tmp_path / n for n in ("0", "1", "2", "3"))
    for d in (top / "etc/x", low / "etc", base / "etc"):
        d.mkdir(parents=True)
    mid.mkdir()  # no etc here: looked through
    assert stack_lowers([top, mid, low, base], "etc") == [top / "etc", low / "etc", base / "etc"]
    (low / "usr").mkdir()
    (low / "usr/lib").write_text("a file hides lower layers' usr/lib")
    (base / "usr/lib").mkdir(parents=True)
    assert stack_lowers([top, mid, low, base], "usr/lib") == []
    assert stack_lowers([top, mid, low, base], "etc/x") == [top / "etc/x"]


def test_the_shell_layout_mounts_the_default_layout() -> None:
    """/usr/libexec/cos-layout hands anything but the default layout to `cos mount`;
    its paths are Layout's defaults, in the order cos.system.layout mounts them."""
    text = data_path("libexec", "cos-layout").read_text()

    def var(name: str) -> str:
        found = re.search(rf'^{name}="?([^"\n]*?)"?$', text, re.M)
        assert found, name
        return found.group(1)

    layout = Layout()

    def depth(p: str) -> tuple[int, str]:
        return (len(Path(p).parts), p)

    assert var("EPHEMERAL").split() == sorted(layout.ephemeral, key=depth)
    both = sorted({*layout.persistent, *layout.persistent_bind}, key=depth)
    assert [*var("PERSISTENT").split(), *var("BIND").split()] == both
    assert set(var("BIND").split()) == set(layout.persistent_bind)
    assert var("OEM_MOUNT") == layout.oem_mount
    assert var("PERSISTENT_MOUNT") == layout.persistent_mount
    assert var("EPHEMERAL_SIZE") == layout.ephemeral_size
    assert var("OVERLAY_BASE") == OVERLAY_BASE
    assert var("LAYERS_RUN") == LAYERS_RUN
    assert var("STATE_DIR") == PERSISTENT_STATE_DIR
