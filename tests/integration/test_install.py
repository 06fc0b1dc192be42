"""cos install onto a loop block device (no VM): the result and the refusals."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cos.config import Labels, Partitions
from cos.disk.plan import plan_disk
from tests.support import events
from tests.support.device import GIB, SMALL, snapshot_mounted
from tests.support.images import LAYOUT


def _env(tmp: Path) -> dict[str, str]:
    conf = tmp / "etc-cos"
    conf.mkdir(exist_ok=True)
    return {
        **os.environ,
        "COS_CONFIG_DIR": str(conf),
        **SMALL,
        "COS_CACHE_DIR": str(LAYOUT.parent / "cache"),
    }


@pytest.fixture
def loopdev(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    size = getattr(request, "param", 6 * GIB)
    backing = tmp_path / "disk.raw"
    with open(backing, "wb") as f:
        f.truncate(size)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def _install(dev: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cos",
            "install",
            str(dev),
            "--system",
            f"oci:{LAYOUT}:vanilla",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=_env(tmp),
        check=False,
    )


def _digest(dev: Path) -> str:
    """Hash of the places an install writes first: MBR+GPT head and the GPT tail."""
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        h.update(f.read(2 * 1024 * 1024))
        f.seek(-1024 * 1024, os.SEEK_END)
        h.update(f.read())
    return h.hexdigest()


def _refused(r: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("cos: error:") and words in lines[-2], r.stderr
    assert lines[-1].startswith("hint:") and "Traceback" not in r.stderr


def test_install_then_refuse_to_overwrite(loopdev: Path, tmp_path: Path, vanilla: str) -> None:
    ci = tmp_path / "node.yaml"
    ci.write_text(
        "name: node\nstages:\n"
        f"  before-install:\n    - commands: ['echo before > {tmp_path}/hook-before']\n"
        "  after-install-chroot:\n"
        "    - files: [{path: /etc/installed-marker, content: chroot, permissions: 0644}]\n"
        f"  after-install:\n    - commands: ['echo after > {tmp_path}/hook-after']\n"
        "  boot:\n    - hostname: node-1\n"
    )
    r = _install(loopdev, tmp_path, "--cloud-init", str(ci), "--json")
    assert r.returncode == 0, r.stderr
    evs = events.parse(r.stdout)
    steps = [e["step"] for e in events.of(evs, "step-end") if e["ok"]]
    assert steps[0] == f"Checking oci:{LAYOUT}:vanilla" and "Building snapshot 1" in steps
    assert events.result(evs) | {"time": ""} == {
        "event": "result",
        "time": "",
        "command": "install",
        "image": f"oci:{LAYOUT}:vanilla",
        "digest": vanilla,
        "device": str(loopdev),
        "snapshot": 1,
        "ok": True,
        "exit_code": 0,
    }
    # Hooks: before-/after-install on this system, after-install-chroot in the new tree.
    assert (tmp_path / "hook-before").read_text() == "before\n"
    assert (tmp_path / "hook-after").read_text() == "after\n"

    out = subprocess.run(
        ["sgdisk", "--print", str(loopdev)], capture_output=True, text=True, check=True
    ).stdout
    names = [ln.split()[-1] for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert names == ["bios", "efi", "oem", "recovery", "state", "persistent"]
    plan = plan_disk(Partitions(recovery=1024, state=4096), Labels(), 6 * 1024)
    with open(loopdev, "rb") as f:
        mbr = f.read(512)
    assert mbr[510:512] == b"\x55\xaa" and b"GRUB" in mbr

    def mount(name: str, where: Path) -> Path:
        p = plan.part(name)
        where.mkdir()
        subprocess.run(
            [
                "mount",
                "-o",
                f"ro,loop,offset={p.offset},sizelimit={p.size}",
                str(loopdev),
                str(where),
            ],
            check=True,
        )
        return where

    mounts = []
    try:
        state = mount("state", tmp_path / "state")
        mounts.append(state)
        st = yaml.safe_load((state / "state.yaml").read_text())
        snap = st["snapshots"][1]
        assert snap["from-action"] == "install" and snap["active"] and snap["digest"] == vanilla
        assert os.readlink(state / ".snapshots/active") == "1"  # layers, the default
        with snapshot_mounted(state, 1, tmp_path / "snap") as snap:
            assert (snap / "etc/installed-marker").read_text() == "chroot"
        index = json.loads((state / ".store/index.json").read_text())
        assert [
            m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
        ] == ["snapshot-1"]
        rec = mount("recovery", tmp_path / "rec")
        mounts.append(rec)
        assert {p.name for p in (rec / "boot").iterdir()} >= {"recovery.img", "vmlinuz", "initrd"}
        oem = mount("oem", tmp_path / "oem")
        mounts.append(oem)
        assert (oem / "90_custom.yaml").read_text() == ci.read_text()
        assert (oem / "grubenv").stat().st_size == 1024
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-d", str(m)], check=True)
    efi = plan.part("efi")
    listing = subprocess.run(
        ["mdir", "-i", f"{loopdev}@@{efi.offset}", "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert "BOOTX64" in listing

    # A second install refuses without --force, and writes nothing.
    before = _digest(loopdev)
    r = _install(loopdev, tmp_path, "--json")
    _refused(r, 5, "already holds a cos installation")
    events.check_failed(r.stdout, 5, "already holds a cos installation")
    assert _digest(loopdev) == before


@pytest.mark.parametrize("loopdev", [2 * GIB], indirect=True)
def test_too_small_device_is_refused_untouched(loopdev: Path, tmp_path: Path) -> None:
    before = _digest(loopdev)
    _refused(_install(loopdev, tmp_path), 5, "too small")
    assert _digest(loopdev) == before


def test_in_use_and_not_a_device(loopdev: Path, tmp_path: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", str(loopdev)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", str(loopdev), str(mnt)], check=True)
    try:
        before = _digest(loopdev)
        _refused(_install(loopdev, tmp_path), 5, "in use")
        assert _digest(loopdev) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    _refused(_install(tmp_path / "disk.raw", tmp_path), 5, "not a block device")
