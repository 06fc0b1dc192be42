"""cos build-disk against real images, tools and a real registry (no VM)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from cos.boot import grubenv
from cos.cli import main
from cos.config import Labels, Partitions
from cos.disk.plan import plan_disk
from cos.errors import ExitCode
from tests.support import events
from tests.support.device import SMALL, snapshot_mounted
from tests.support.images import LAYOUT

pytestmark = pytest.mark.integration

USER_CONFIG = """name: disk-test
stages:
  initramfs:
    - hostname: cos-test
  after-disk-chroot:
    - files:
        - {path: /etc/cos-disk-hook, permissions: 0644, content: "made at build-disk"}
"""


@contextmanager
def mounted(disk: Path, offset: int, size: int, where: Path) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-o", f"ro,loop,offset={offset},sizelimit={size}", str(disk), str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-d", str(where)], check=True)


def _no_leftovers(directory: Path, keep: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == keep


@pytest.fixture(scope="module")
def built_disk(tmp_path_factory: pytest.TempPathFactory, vanilla: str) -> tuple[Path, Path, str]:
    out = tmp_path_factory.mktemp("disk")
    ci = out / "user.yaml"
    ci.write_text(USER_CONFIG)
    conf = out / "etc-cos"
    conf.mkdir()
    env = {
        **os.environ,
        "COS_CONFIG_DIR": str(conf),
        **SMALL,
        "COS_CACHE_DIR": str(LAYOUT.parent / "cache"),
    }
    disk = out / "disk.raw"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cos",
            "build-disk",
            f"oci:{LAYOUT}:vanilla",
            "-o",
            str(disk),
            "--cloud-init",
            str(ci),
            "--json",
        ],
        check=True,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    (out / "events.jsonl").write_text(r.stdout)
    return disk, out, vanilla


def test_json_events(built_disk: tuple[Path, Path, str]) -> None:
    """--json: stdout held the event stream alone, steps paired, one result naming the disk."""
    disk, out, digest = built_disk
    evs = events.parse((out / "events.jsonl").read_text())
    steps = [e["step"] for e in events.of(evs, "step-end") if e["ok"]]
    assert "Building snapshot 1" in steps and len(steps) == len(events.of(evs, "step-start"))
    assert events.result(evs) | {"time": ""} == {
        "event": "result",
        "time": "",
        "command": "build-disk",
        "image": f"oci:{LAYOUT}:vanilla",
        "digest": digest,
        "output": str(disk),
        "bytes": disk.stat().st_size,
        "ok": True,
        "exit_code": 0,
    }


def test_gpt_layout(built_disk: tuple[Path, Path, str]) -> None:
    disk, _, _ = built_disk
    out = subprocess.run(
        ["sgdisk", "-p", str(disk)], check=True, capture_output=True, text=True
    ).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert names == ["bios", "efi", "oem", "recovery", "state", "persistent"]
    codes = [line.split()[5] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert codes[:2] == ["EF02", "EF00"]
    with open(disk, "rb") as f:
        mbr = f.read(512)
    assert mbr[510:] == b"\x55\xaa" and mbr[0x1C2] == 0xEE  # protective MBR kept
    with open(disk, "rb") as f:
        f.seek(2048 * 512)
        assert f.read(512) != bytes(512)  # core.img in the bios partition


def test_partitions_contents(built_disk: tuple[Path, Path, str], tmp_path: Path) -> None:
    disk, _, digest = built_disk
    plan = plan_disk(Partitions(recovery=1024, state=4096), Labels())
    fs = {}
    for p in plan.parts[1:]:
        fs[p.name] = subprocess.run(
            ["blkid", "-p", "-O", str(p.offset), "-o", "export", str(disk)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert f"LABEL={p.label}" in fs[p.name], fs[p.name]
    assert "TYPE=vfat" in fs["efi"] and "TYPE=ext4" in fs["state"]

    # The ESP is read with mtools: this host's kernel may lack vfat.
    efi = plan.part("efi")
    m = tmp_path / "efi"
    subprocess.run(
        ["mcopy", "-s", "-n", "-i", f"{disk}@@{efi.offset}", "::/", str(m)],
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    )
    assert (m / "EFI/BOOT/BOOTX64.EFI").stat().st_size > 100_000
    assert "menuentry" in (m / "grub/grub.cfg").read_text()
    assert (m / "grub/i386-pc/normal.mod").is_file() and (
        m / "grub/x86_64-efi/normal.mod"
    ).is_file()
    env = grubenv.read(m / "grub_oem_env")
    assert env["state_label"] == "COS_STATE" and env["oem_label"] == "COS_OEM"

    oem = plan.part("oem")
    with mounted(disk, oem.offset, oem.size, tmp_path / "oem") as m:
        assert grubenv.read(m / "grubenv") == {"passive_snaps": ""}  # no other snapshot yet
        assert (m / "grubenv").stat().st_size == 1024
        assert (m / "90_custom.yaml").read_text() == USER_CONFIG
        assert (m / "90_custom.yaml").stat().st_mode & 0o777 == 0o600

    state = plan.part("state")
    with mounted(disk, state.offset, state.size, tmp_path / "state") as m:
        st = yaml.safe_load((m / "state.yaml").read_text())
        snap = st["snapshots"][1]
        assert snap["active"] and snap["digest"] == digest and snap["from-action"] == "build-disk"
        assert (
            snap["source"].endswith(":vanilla")
            and snap["os-release"]["IMAGE"] == "cos/vanilla:latest"
        )
        # The default snapshotter: snapshot 1 is the image's layers (one erofs image
        # each, described by its sum) and the hook's changes on top.
        assert os.readlink(m / ".snapshots/active") == "1"
        listed = (m / ".snapshots/1/layers").read_text().split()
        assert listed[0] == "1/top.erofs" and len(listed) >= 2
        for layer in listed[1:]:
            image = m / ".snapshots" / layer
            assert image.parent.name == ".layers"
            sha = hashlib.sha256(image.read_bytes()).hexdigest()
            assert json.loads(image.with_suffix(".json").read_text())["sha256"] == sha
        # The after-disk-chroot hook of the --cloud-init file changed the snapshot.
        with snapshot_mounted(m, 1, tmp_path / "snap") as s:
            assert (s / "etc/cos-disk-hook").read_text() == "made at build-disk"
            assert (s / "etc/os-release").is_file()

    rec = plan.part("recovery")
    with mounted(disk, rec.offset, rec.size, tmp_path / "rec") as m:
        kind = subprocess.run(
            ["blkid", "-o", "value", "-s", "TYPE", str(m / "boot/recovery.img")],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert kind == "squashfs"
        assert (m / "boot/vmlinuz").stat().st_size > 1_000_000
        assert (m / "boot/initrd").stat().st_size > 1_000_000
        assert "kernelcmd" in (m / "boot/bootargs.cfg").read_text()
        assert yaml.safe_load((m / "state.yaml").read_text())["recovery"]["digest"] == digest


def test_filesystems_are_clean(built_disk: tuple[Path, Path, str]) -> None:
    disk, _, _ = built_disk
    plan = plan_disk(Partitions(recovery=1024, state=4096), Labels())
    for name in ("oem", "recovery", "state", "persistent"):
        p = plan.part(name)
        loop = subprocess.run(
            [
                "losetup",
                "-f",
                "--show",
                "-r",
                "-o",
                str(p.offset),
                "--sizelimit",
                str(p.size),
                str(disk),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        try:
            r = subprocess.run(["e2fsck", "-fn", loop], capture_output=True, text=True)
            assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)


def test_qcow2_from_a_registry_reference(
    vanilla: str,
    local_registry: str,
    tmp_path: Path,
    cache_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)
    ref = f"{local_registry}/cos/vanilla:latest"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{LAYOUT}:vanilla",
            f"docker://{ref}",
        ],
        check=True,
    )
    # Plain-HTTP registry without --tls-verify=false: a clear error and a hint.
    out = tmp_path / "d.qcow2"
    assert main(["build-disk", ref, "-o", str(out), "--type", "qcow2", "--json"]) == ExitCode.IMAGE
    got = capsys.readouterr()
    assert "--tls-verify=false" in got.err and not out.exists()
    (err,) = events.of(events.check_failed(got.out, ExitCode.IMAGE, ref), "error")
    assert "--tls-verify=false" in err["message"] + err["hint"]

    assert main(["build-disk", ref, "-o", str(out), "--type", "qcow2", "--tls-verify=false"]) == 0
    assert capsys.readouterr().out == ""  # without --json, nothing on stdout
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert (
        info["virtual-size"]
        == plan_disk(Partitions(recovery=1024, state=4096), Labels()).size_mib * 2**20
    )
    registry_digest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["Digest"]
    raw = tmp_path / "d.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(out), str(raw)], check=True)
    state = plan_disk(Partitions(recovery=1024, state=4096), Labels()).part("state")
    with mounted(raw, state.offset, state.size, tmp_path / "m") as m:
        st = yaml.safe_load((m / "state.yaml").read_text())
    assert st["snapshots"][1]["digest"] == registry_digest
    assert st["snapshots"][1]["source"] == ref
    _no_leftovers(tmp_path, {"d.qcow2", "d.raw", "m", "etc-cos"})


class TestRefusals:
    """Bad input: one line and a hint, exit ≠ 0, and no OUT (nor temp files) left behind."""

    def _fails(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], code: ExitCode, match: str
    ) -> None:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == code, err
        lines = err.strip().splitlines()
        # progress lines may come first; the error is the last line but the hint
        assert lines[-2].startswith("cos: error: ") and match in lines[-2], err
        assert lines[-1].startswith("hint: "), err
        assert sum(line.startswith("cos: error") for line in lines) == 1
        assert "Traceback" not in err

    def test_size_too_small(
        self, tmp_path: Path, cache_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "d.raw"
        self._fails(
            capsys,
            ["build-disk", f"oci:{LAYOUT}:vanilla", "-o", str(out), "--size", "2G"],
            ExitCode.DISK,
            "disk size 2048 MiB is too small",
        )
        _no_leftovers(tmp_path, {"etc-cos"})

    def test_state_partition_too_small_for_the_snapshots(
        self,
        vanilla: str,
        tmp_path: Path,
        cache_env: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("COS_PARTITIONS__STATE", "1024")
        out = tmp_path / "d.raw"
        self._fails(
            capsys,
            ["build-disk", f"oci:{LAYOUT}:vanilla", "-o", str(out)],
            ExitCode.DISK,
            "the state partition (",
        )
        _no_leftovers(tmp_path, {"etc-cos"})

    def test_unreachable_registry(
        self, tmp_path: Path, cache_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "d.raw"
        self._fails(
            capsys,
            ["build-disk", "127.0.0.1:9/cos/none:1", "-o", str(out), "--tls-verify=false"],
            ExitCode.IMAGE,
            "cannot read image",
        )
        _no_leftovers(tmp_path, {"etc-cos"})

    def test_missing_tag(
        self, vanilla: str, tmp_path: Path, cache_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self._fails(
            capsys,
            ["build-disk", f"oci:{LAYOUT}:nope", "-o", str(tmp_path / "d")],
            ExitCode.IMAGE,
            "tag 'nope' not found",
        )

    def test_image_without_kernel(
        self, tmp_path: Path, cache_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        layout = tmp_path / "tiny"
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:v1"], check=True)
        bundle = tmp_path / "bundle"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)],
            check=True,
            capture_output=True,
        )
        (bundle / "rootfs/etc").mkdir(parents=True)
        (bundle / "rootfs/etc/hostname").write_text("tiny\n")
        subprocess.run(
            ["umoci", "repack", "--image", f"{layout}:v1", str(bundle)],
            check=True,
            capture_output=True,
        )
        out = tmp_path / "d.raw"
        self._fails(
            capsys,
            ["build-disk", f"oci:{layout}:v1", "-o", str(out)],
            ExitCode.IMAGE,
            "has no kernel",
        )
        _no_leftovers(tmp_path, {"etc-cos", "tiny", "bundle"})

    def test_image_not_prepared_by_cos_init(
        self, vanilla: str, tmp_path: Path, cache_env: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "d.raw"
        self._fails(
            capsys,
            ["build-disk", f"oci:{LAYOUT}:base", "-o", str(out)],
            ExitCode.IMAGE,
            "was not prepared by cos init",
        )
        _no_leftovers(tmp_path, {"etc-cos"})


def test_expandable_disk_has_no_state_until_first_boot(
    tmp_path: Path, vanilla: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--expandable: bios, efi, oem and recovery only; the first-boot config on COS_OEM
    and a state.yaml on recovery that records the recovery system and no snapshot."""
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    for k, v in {**SMALL, "COS_CONFIG_DIR": str(conf)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("COS_CACHE_DIR", str(LAYOUT.parent / "cache"))
    disk = tmp_path / "small.raw"
    assert main(["build-disk", f"oci:{LAYOUT}:vanilla", "-o", str(disk), "--expandable"]) == 0
    plan = plan_disk(Partitions(recovery=1024, state=4096), Labels(), expandable=True)
    assert disk.stat().st_size == plan.size_mib * 2**20
    out = subprocess.run(
        ["sgdisk", "-p", str(disk)], check=True, capture_output=True, text=True
    ).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert names == ["bios", "efi", "oem", "recovery"]

    oem = plan.part("oem")
    with mounted(disk, oem.offset, oem.size, tmp_path / "oem") as m:
        steps = yaml.safe_load((m / "00_expand-disk.yaml").read_text())["stages"]["boot"]
        sizes = [p["size"] for p in steps[0]["layout"]["add_partitions"]]
        assert sizes == [4096, 0]  # state as configured, persistent the rest
        assert steps[1]["commands"][0].startswith("cos reset && rm -f /oem/00_expand-disk.yaml")
    rec = plan.part("recovery")
    with mounted(disk, rec.offset, rec.size, tmp_path / "rec") as m:
        st = yaml.safe_load((m / "state.yaml").read_text())
        assert st["snapshots"] == {} and st["recovery"]["digest"] == vanilla
        assert [h["action"] for h in st["history"]] == ["build-disk"]
        assert (m / "boot/recovery.img").is_file() and (m / "boot/vmlinuz").is_file()
