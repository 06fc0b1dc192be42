"""cos-stage-wanted, the cos-setup-* units' ExecCondition: a stage's Python start is
skipped only when no cloud-config can name that stage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cos.boot import assessment, grubenv
from cos.data import data_path

SCRIPT = data_path("libexec", "cos-stage-wanted")

YIP = "name: d\nstages:\n  {stage}:\n    - commands: [true]\n"


def _wanted(root: Path, stage: str, **more: str) -> bool:
    env = {"PATH": os.environ["PATH"], "COS_STAGE_ROOT": str(root), **more}
    r = subprocess.run(["sh", str(SCRIPT), stage], env=env, check=False)
    assert r.returncode in (0, 1)
    return r.returncode == 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=LABEL=COS_STATE quiet\n")
    (tmp_path / "system/oem").mkdir(parents=True)
    # An image's own document that names initramfs only.
    (tmp_path / "system/oem/00_id.yaml").write_text(YIP.format(stage="initramfs"))
    return tmp_path


def test_a_stage_no_document_names_is_skipped_and_marked(root: Path) -> None:
    assert not _wanted(root, "fs")
    assert not _wanted(root, "network")
    assert _wanted(root, "initramfs")
    assert sorted(p.name for p in (root / "run/cos/skipped-stages").iterdir()) == [
        "fs",
        "network",
    ]


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("oem/90_fs.yaml", YIP.format(stage="fs")),
        ("oem/90_fs.yaml", YIP.format(stage="fs.after")),
        ("usr/local/cloud-config/sub/x.yml", '{"stages": {"fs": []}}'),
        ("oem/users.yaml", "#cloud-config\nusers:\n  - name: kairos\n"),
        ("etc/cos/config.d/10.yaml", "cloud-init-paths: [/srv/configs]\n"),
        ("proc/cmdline", "root=LABEL=COS_STATE cos.setup=/run/cos/state/iso-config\n"),
        ("proc/cmdline", "quiet elemental.setup=http://127.0.0.1/c.yaml\n"),
        ("proc/cmdline", 'quiet stages.fs[0].commands[0]="touch /x"\n'),
        ("etc/cos/config.yaml", "cloud_init_paths: [/srv/configs]\n"),
    ],
)
def test_anything_that_may_name_the_stage_runs_it(root: Path, where: str, text: str) -> None:
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text(text)
    assert _wanted(root, "fs")
    assert not (root / "run/cos/skipped-stages").exists()


def test_a_symlinked_file_or_the_environment_can_name_it(root: Path) -> None:
    (root / "ext").mkdir()
    (root / "ext/fs.yaml").write_text(YIP.format(stage="fs"))
    (root / "oem").mkdir()
    (root / "oem/90_fs.yaml").symlink_to("../ext/fs.yaml")
    assert _wanted(root, "fs")
    (root / "oem/90_fs.yaml").unlink()
    assert not _wanted(root, "fs")
    assert _wanted(root, "fs", COS_CLOUD_INIT_PATHS="/srv/configs")


def test_a_word_that_only_contains_the_name_does_not_count(root: Path) -> None:
    (root / "oem").mkdir()
    (root / "oem/x.yaml").write_text(YIP.format(stage="boot") + "# mkfs, initramfs, fsck\n")
    assert not _wanted(root, "fs")
    assert _wanted(root, "boot")


def test_an_odd_stage_name_runs_the_stage(root: Path) -> None:
    assert _wanted(root, "")
    assert _wanted(root, "fs;rm")
    assert _wanted(root, "../fs")


def _trial_pending(root: Path) -> bool:
    script = data_path("libexec", "cos-trial-pending")
    env = {"PATH": os.environ["PATH"], "COS_STAGE_ROOT": str(root)}
    r = subprocess.run(["sh", str(script)], env=env, check=False)
    assert r.returncode in (0, 1)
    return r.returncode == 0


def test_boot_assessment_starts_only_with_a_trial_or_in_doubt(tmp_path: Path) -> None:
    oem = tmp_path / "oem"
    oem.mkdir()
    assert _trial_pending(tmp_path)  # no grubenv: let the assessment decide
    grubenv.write(oem / "grubenv", {"saved_entry": "active", "cos_passive": "1"})
    assert not _trial_pending(tmp_path)
    assessment.start_trial(oem, 2, 1, 3, [1])
    assert _trial_pending(tmp_path)
    assessment.end_trial(oem)
    assert not _trial_pending(tmp_path)
    (oem / "grubenv").write_text("cos_trial=2\n")  # not a GRUB environment block
    assert _trial_pending(tmp_path)
    (oem / "grubenv").write_bytes(b"\xff" * 1024)
    assert _trial_pending(tmp_path)
    (oem / "grubenv").write_text("cos_passive=1\n# GRUB Environment Block\n")  # header not first
    assert _trial_pending(tmp_path)
    # The grubenv lives on a moved oem mount: this script cannot know where.
    grubenv.write(oem / "grubenv", {"saved_entry": "active"})
    assert not _trial_pending(tmp_path)
    (tmp_path / "etc/cos/config.d").mkdir(parents=True)
    (tmp_path / "etc/cos/config.d/10.yaml").write_text("layout:\n  oem-mount: /run/oem\n")
    assert _trial_pending(tmp_path)
