"""Real Kairos and Elemental files (tests/data/cloud-configs, sources listed there) run
unchanged: their typos and installer keys are warnings, their steps run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cos import run as runner
from cos.cloudinit.loader import load_source
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import run_stage, template_values

DATA = Path(__file__).resolve().parents[2] / "data/cloud-configs"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/group").write_text("root:x:0:\n")
    return r


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    seen: list[list[str]] = []

    def fake(argv: list[str], **kw: Any) -> runner.Result:
        seen.append(list(argv))
        return runner.Result(tuple(argv), 0, "", "")

    monkeypatch.setattr(runner, "run", fake)
    yield seen


def run(root: Path, name: str, stage: str) -> tuple[list[str], list[str]]:
    """(warnings, statuses) of one stage of one file under root."""
    loaded = load_source(str(DATA / name))
    assert not loaded.errors, loaded.errors
    ctx = Context(root=root, values=template_values(root))
    summary = run_stage(stage, loaded.documents, ctx)
    return [str(w) for w in loaded.warnings], [r.status for r in summary.results]


def test_kairos_default_user_runs_despite_its_typo(root: Path, commands: list[list[str]]) -> None:
    warnings, statuses = run(root, "kairos-10_accounting.yaml", "initramfs")
    (w,) = warnings
    assert ":29:9: stages.initramfs[3].files[0].permsisions: unknown key" in w
    assert "did you mean 'permissions'?" in w
    assert statuses == ["ran", "ran", "ran", "ran"]  # the if: ran through the (fake) shell
    assert "admin:x:900:kairos" in (root / "etc/group").read_text()
    assert "kairos:x:1000:1000::/home/kairos:/bin/bash" in (root / "etc/passwd").read_text()
    assert "%admin ALL=(ALL) NOPASSWD: ALL" in (root / "etc/sudoers").read_text()
    assert ["chroot", str(root), "/bin/sh", "-c", "passwd -l root"] in commands


def test_kairos_autoinstall_keeps_auto_and_warns_on_grub_options(root: Path) -> None:
    loaded = load_source(str(DATA / "kairos-autoinstall.yaml"))
    assert not loaded.errors
    (doc,) = loaded.documents
    assert doc.install == {"auto": True, "reboot": True, "device": "/dev/vda"}
    (w,) = loaded.warnings
    assert "install.grub_options" in str(w) and "Kairos installer setting" in str(w)


def test_kairos_config_without_auto_installs_nothing_and_runs(
    root: Path, commands: list[list[str]]
) -> None:
    (doc,) = load_source(str(DATA / "kairos-config.yaml")).documents
    assert doc.install is not None and "auto" not in doc.install
    warnings, statuses = run(root, "kairos-config.yaml", "initramfs")
    assert len(warnings) == 1 and statuses == ["ran", "ran"]
    assert (root / "etc/hostname").read_text().startswith("kairos-")


def test_elemental_root_password_keeps_shadow_aging(root: Path) -> None:
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    warnings, statuses = run(root, "elemental-04_accounting.yaml", "initramfs")
    assert warnings == [] and statuses == ["ran"]
    fields = (root / "etc/shadow").read_text().strip().split(":")
    assert fields[1].startswith("$6$") and fields[2:] == ["19000", "0", "99999", "7", "", "", ""]
