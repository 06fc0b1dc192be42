"""How `cos mount` stacks its overlays on a snapshot made of layers."""

from __future__ import annotations

from pathlib import Path

from cos.system.layout import stack_lowers


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
