"""Live and installation media: the ISO boots live (BIOS and EFI) and installs itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import (
    BUILD,
    LAYOUT,
    REPO,
    ensure_e2e_image,
    keep,
    restored,
    tree_hash,
)

pytestmark = pytest.mark.e2e


UNATTENDED = """#cloud-config
install:
  auto: true
  device: /dev/vda
  poweroff: true
  cloud-init: [/run/cos/state/iso-config/90_custom-1.yaml]
"""
INSTALLED_NODE = """name: installed
stages:
  initramfs:
    - hostname: installed-from-iso
"""


def _iso(name: str, files: dict[str, str]) -> Path:
    """build-iso of the e2e image, cached by image digest, toolkit sources and files."""
    digest = ensure_e2e_image()
    key = hashlib.sha256(
        (digest + tree_hash(REPO / "src/cos") + json.dumps(files)).encode()
    ).hexdigest()[:16]
    iso = BUILD / "e2e" / f"{name}-{key}.iso"
    sums = iso.with_name(iso.name + ".sha256")
    if not iso.exists():
        iso.parent.mkdir(parents=True, exist_ok=True)
        for old in iso.parent.glob(f"{name}-*.iso*"):
            old.unlink()
        if restored("restore-file", f"iso-{name}", key, iso, sums):
            return iso
        argv = [sys.executable, "-m", "cos", "build-iso", f"oci:{LAYOUT}:e2e", "-o", str(iso)]
        for fname, text in files.items():
            f = iso.parent / fname
            f.write_text(text)
            argv += ["--cloud-init", str(f)]
        subprocess.run(argv, check=True, env={**os.environ, "COS_CACHE_DIR": str(BUILD / "cache")})
        keep("keep-file", f"iso-{name}", key, iso, sums)
    return iso


@pytest.fixture(scope="session")
def e2e_iso() -> Path:
    return _iso("live", {})


@pytest.fixture(scope="session")
def unattended_iso() -> Path:
    # --cloud-init files land in iso-config/ as 90_custom-N.yaml, in the order given.
    return _iso("unattended", {"node.yaml": INSTALLED_NODE, "install.yaml": UNATTENDED})


def test_iso_is_hybrid_and_checksummed(e2e_iso: Path) -> None:
    sums = e2e_iso.with_name(e2e_iso.name + ".sha256").read_text().split()
    assert sums == [hashlib.sha256(e2e_iso.read_bytes()).hexdigest(), e2e_iso.name]
    report = (
        subprocess.run(
            ["xorriso", "-indev", str(e2e_iso), "-report_el_torito", "plain"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        + subprocess.run(
            ["xorriso", "-indev", str(e2e_iso), "-find", "/", "-type", "f"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert "BIOS" in report and "UEFI" in report, report
    for path in ("/boot/vmlinuz", "/boot/initrd", "/rootfs.squashfs", "/image/index.json"):
        assert f"'{path}'" in report, path
    assert e2e_iso.read_bytes()[510:512] == b"\x55\xaa"  # MBR: boots when dd'ed to a stick


def test_live_boot_touches_no_disk(vm_factory, e2e_iso: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """EFI here; the unattended install below boots the same media by BIOS."""
    blank = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16G"], check=True)
    vm = vm_factory("efi", disk=blank, cdrom=e2e_iso)
    vm.start()
    vm.wait_multi_user(timeout=600)
    vm.ok("test -e /run/cos/live_mode")
    assert vm.ok("findmnt -no FSTYPE /").strip() == "squashfs"
    assert vm.ok("findmnt -no FSTYPE /run/cos/state").strip() == "iso9660"
    assert "vda" not in vm.ok("findmnt -rno SOURCE")  # nothing of the local disk mounted
    vm.ok("touch /etc/live-writable /home/live-writable")  # RAM overlays
    assert vm.ok("test -d /sys/firmware/efi && echo efi").strip() == "efi"


def test_unattended_install_from_live_media(
    vm_factory, unattended_iso: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The ISO's install: section installs the live image onto the blank disk and powers
    off, with no command typed; the disk then boots into active."""
    target = tmp_path / "target.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), "16G"], check=True)
    vm = vm_factory("bios", disk=target, cdrom=unattended_iso)
    vm.start()
    assert vm.wait_exit(timeout=2400) == 0

    installed = vm_factory("bios", disk=target)
    installed.start()
    installed.wait_multi_user()
    st = json.loads(installed.ok("cos status --json"))
    assert (st["mode"], st["booted_snapshot"]) == ("active", 1)
    assert st["snapshots"][0]["from_action"] == "install"
    assert st["snapshots"][0]["source"].endswith("/image:live")
    assert installed.ok("hostname").strip() == "installed-from-iso"
