"""Bad input gets one clear line, a hint, a documented exit code and no traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cos.cli import main
from cos.errors import ExitCode
from tests.conftest import need


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command reads an empty config dir, never the host's /etc/cos."""
    monkeypatch.setenv("COS_CONFIG_DIR", str(tmp_path))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "frobnicate")
    assert rc == ExitCode.USAGE
    assert err.startswith("cos: error: ") and "hint: " in err and "Traceback" not in err


def test_build_disk_bad_reference(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "disk.raw"
    rc, _, err = run(capsys, "build-disk", "not a ref", "-o", str(out))
    assert rc == ExitCode.IMAGE
    lines = err.strip().splitlines()
    assert lines[0].startswith("cos: error: invalid image reference") and lines[1].startswith(
        "hint: "
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.root
def test_build_disk_missing_cloud_init(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(
        capsys,
        "build-disk",
        "oci:/nonexistent:x",
        "-o",
        str(tmp_path / "d"),
        "--cloud-init",
        str(tmp_path / "nope.yaml"),
    )
    assert rc == ExitCode.CONFIG and "nope.yaml does not exist" in err


@pytest.mark.root
def test_build_disk_broken_cloud_init_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  boot: [\n")
    rc, _, err = run(
        capsys,
        "build-disk",
        "oci:/nonexistent:x",
        "-o",
        str(tmp_path / "d"),
        "--cloud-init",
        str(bad),
    )
    assert rc == ExitCode.CONFIG and "bad.yaml:3:1: invalid YAML" in err


def test_bad_size_flag(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "build-disk", "oci:/x", "-o", "/tmp/x", "--size", "lots")
    assert rc == ExitCode.USAGE and "invalid size" in err


def test_bad_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("max-snaps: lots\n")
    rc, _, err = run(capsys, "status")
    assert rc == ExitCode.CONFIG and "config.yaml.max-snaps: expected an integer" in err


def test_init_refuses_on_a_host(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cos.actions import init

    monkeypatch.setattr(init, "image_build_reason", lambda: None)
    rc, _, err = run(capsys, "init")
    assert rc == ExitCode.STATE and "must run inside an image build" in err and "--force" in err


def test_init_unknown_feature(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "init", "--force", "warp-drive")
    assert rc == ExitCode.USAGE and "available features: immutable-rootfs" in err


def test_status_outside_cos(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "status")
    assert rc == ExitCode.STATE and "not booted by cos" in err


def test_cloud_init_strict_fails_with_stage_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    doc = tmp_path / "c.yaml"
    doc.write_text("stages:\n  boot:\n    - files: [{path: rel, content: x}]\n")
    root = tmp_path / "root"
    root.mkdir()
    rc, _, err = run(capsys, "cloud-init", "--root", str(root), "-s", "boot", str(doc))
    assert rc == ExitCode.STAGE and "1 failed" in err
    rc, _, err = run(capsys, "cloud-init", "--strict", "--root", str(root), "-s", "boot", str(doc))
    assert rc == ExitCode.STAGE and "stage boot failed" in err and "hint:" in err


def test_cloud_init_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "cloud-init", "--schema")
    assert rc == 0 and '"stages"' in out


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["upgrade", "--system", "x/y:1"], "runs on a system booted by cos"),
        (["rollback"], "runs on a system booted by cos"),
        (["reset"], "runs on a system booted by cos"),
        (["upgrade-recovery"], "runs on a system booted by cos"),
    ],
)
def test_lifecycle_commands_outside_a_cos_boot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], words: str
) -> None:
    flags = ["--state-dir", str(tmp_path), "--oem-dir", str(tmp_path), "--run-dir", str(tmp_path)]
    rc, _, err = run(capsys, *argv, *flags)
    assert rc == ExitCode.STATE, err
    assert words in err and "hint: " in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_upgrade_in_recovery_mode_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "recovery_mode").touch()
    flags = ["--state-dir", str(tmp_path), "--oem-dir", str(tmp_path), "--run-dir", str(tmp_path)]
    rc, _, err = run(capsys, "upgrade", "--system", "x/y:1", *flags)
    assert rc == ExitCode.STATE and "cannot run in recovery mode" in err


def test_install_refuses_a_regular_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    need("sgdisk", "mkfs.ext4", "mkfs.vfat", "blockdev", "e2fsck", "resize2fs")  # checked first
    target = tmp_path / "disk.raw"
    target.write_bytes(b"\0" * 4096)
    rc, _, err = run(capsys, "install", str(target), "--system", "x/y:1")
    assert rc == ExitCode.DISK and "not a block device" in err
    assert target.read_bytes() == b"\0" * 4096


def test_rollback_once_and_snapshot_number_parse(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "rollback", "two")
    assert rc == ExitCode.USAGE and "invalid int value" in err


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "--quiet")
    assert rc == ExitCode.USAGE and "no command given" in err and "hint: " in err


def test_upgrade_recovery_flag_runs_the_recovery_upgrade(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cos.actions import upgrade_recovery

    seen: list[upgrade_recovery.RecoveryRequest] = []
    monkeypatch.setattr(upgrade_recovery, "upgrade_recovery", lambda req, cfg: seen.append(req))
    rc, _, _ = run(
        capsys,
        "upgrade",
        "--recovery",
        "--system",
        "x/y:2",
        "--force",
        "--state-dir",
        str(tmp_path),
    )
    assert rc == 0 and len(seen) == 1
    req = seen[0]
    assert (req.system, req.force) == ("x/y:2", True)
    assert req.installed is not None and req.installed.state_dir == tmp_path


def test_repeatable_flags_start_empty_on_every_parse() -> None:
    from cos.cli import build_parser

    first = build_parser().parse_args(["build-disk", "oci:/x", "-o", "d"])
    first.cloud_init.append(Path("leaked.yaml"))
    again = build_parser().parse_args(["install", "/dev/x"])
    assert again.cloud_init == [] and first.cloud_init is not again.cloud_init


def test_debug_log_masks_a_password_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemd-firstboot"
    fake.write_text('#!/bin/sh\necho "$@" > "${0%/*}/argv"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    doc = tmp_path / "c.yaml"
    doc.write_text(
        "stages:\n  boot:\n    - systemd_firstboot:\n"
        "        keymap: us\n        root-password: hunter2\n"
    )
    root = tmp_path / "root"
    root.mkdir()
    argv = ["cloud-init", "--root", str(root), "-s", "boot", str(doc)]

    rc, out, err = run(capsys, "--debug", *argv)
    assert rc == 0, err
    assert "--root-password=hunter2" in (bindir / "argv").read_text()  # the tool got it
    assert "$ systemd-firstboot" in err and "--root-password=***" in err
    assert "hunter2" not in err + out

    rc, out, err = run(capsys, "--debug", *argv, "--dry-run")
    assert rc == 0 and "would systemd-firstboot --keymap=us --root-password=***" in out
    assert "hunter2" not in err + out
