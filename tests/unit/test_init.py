"""cos init checks before it writes, and a failure leaves the tree as it found it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cos.actions import init as init_action
from cos.actions.init import init_image
from cos.errors import CosError, ImageError
from cos.system import features


def _tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_file():
            out[key] = ("file", p.read_bytes(), p.stat().st_mode)
        else:
            out[key] = ("dir", p.stat().st_mode)
    return out


def _image(root: Path, *, kernel: bool = True, dracut: bool = True) -> None:
    (root / "usr/share/systemd").mkdir(parents=True)
    (root / "usr/share/systemd/tmp.mount").write_text("[Mount]\nWhat=tmpfs\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/cos-status.service").write_text("an older unit\n")
    if kernel:
        (root / "boot").mkdir()
        (root / "boot/vmlinuz-6.1.0-1-amd64").write_text("kernel")
        (root / "usr/lib/modules/6.1.0-1-amd64").mkdir(parents=True)
    if dracut:
        (root / "usr/bin").mkdir(parents=True, exist_ok=True)
        (root / "usr/bin/dracut").write_text("#!/bin/sh\n")


@pytest.mark.parametrize(
    ("kernel", "dracut", "words"), [(False, True, "kernel"), (True, False, "dracut")]
)
def test_what_is_missing_is_refused_before_the_first_write(
    tmp_path: Path, kernel: bool, dracut: bool, words: str
) -> None:
    _image(tmp_path, kernel=kernel, dracut=dracut)
    before = _tree(tmp_path)
    with pytest.raises(ImageError, match=words):
        init_image([], root=tmp_path)
    assert _tree(tmp_path) == before


def test_a_failure_halfway_puts_every_file_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _image(tmp_path)
    before = _tree(tmp_path)

    def dracut_fails(root: Path) -> None:
        raise CosError("dracut failed")

    monkeypatch.setattr(init_action, "rebuild_initrd", dracut_fails)
    with pytest.raises(CosError, match="dracut failed"):
        init_image([], root=tmp_path)  # every feature was installed by then
    assert _tree(tmp_path) == before


def test_a_booted_machine_is_no_image_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_pid1", lambda: "systemd")
    assert features.image_build_reason() is None
