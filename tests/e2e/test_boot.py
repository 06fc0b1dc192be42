"""The derivative disk boots, BIOS and EFI, into the immutable layout (issue: bootable disk)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def _device_of_label(vm, label: str) -> str:  # type: ignore[no-untyped-def]
    return vm.ok(f"readlink -f /dev/disk/by-label/{label}").strip()


def test_bios_boot_immutable_layout_and_persistence(vm_factory) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("bios")
    vm.start()
    vm.wait_multi_user()

    # / is the snapshot image, mounted read-only through a loop device.
    src, fstype, opts = vm.ok("findmnt -no SOURCE,FSTYPE,OPTIONS /").split()
    assert src.startswith("/dev/loop") and fstype == "ext4"
    assert "ro" in opts.split(",")
    backing = vm.ok(f"losetup -nO BACK-FILE {src}").strip()
    assert backing.endswith(".snapshots/1/snapshot.img"), backing
    assert vm.ok("test -e /run/cos/active_mode && echo yes").strip() == "yes"

    # Writing to /usr fails: the root is immutable.
    r = vm.sh("touch /usr/cos-e2e-probe")
    assert r.rc != 0 and "Read-only file system" in r.err

    # /oem is COS_OEM, /usr/local is COS_PERSISTENT; /etc and /var are overlays.
    assert vm.ok("findmnt -no SOURCE /oem").strip() == _device_of_label(vm, "COS_OEM")
    assert vm.ok("findmnt -no SOURCE /usr/local").strip() == _device_of_label(vm, "COS_PERSISTENT")
    for path in ("/etc", "/var", "/srv", "/root", "/var/log", "/etc/ssh"):
        assert vm.ok(f"findmnt -no FSTYPE --mountpoint {path}").strip() == "overlay", path
    assert vm.ok("findmnt -no FSTYPE /tmp").strip() == "tmpfs"

    # cos status tells what is booted.
    status = json.loads(vm.ok("cos status --json"))
    assert status["mode"] == "active" and status["booted_snapshot"] == 1
    assert status["snapshots"][0]["active"] and status["snapshots"][0]["source"].endswith(":e2e")
    assert status["snapshots"][0]["digest"].startswith("sha256:")
    assert "Booted:    active (snapshot 1)" in vm.console()
    assert vm.ok(". /etc/os-release; echo $IMAGE").strip() == "cos/vanilla:latest"
    # No default password: root is locked until cloud-config gives it keys or a hash.
    assert vm.ok("awk -F: '$1 == \"root\" {print $2}' /etc/shadow").strip()[:1] in ("*", "!")

    # Default cloud-configs: a generated hostname and a machine-id kept on COS_PERSISTENT.
    machine_id = vm.ok("cat /etc/machine-id").strip()
    assert len(machine_id) == 32 and vm.ok("hostname").strip() == f"cos-{machine_id[:6]}"

    vm.ok(
        "echo gone > /etc/cos-e2e-ephemeral && echo kept > /root/cos-e2e-persist"
        " && echo kept > /usr/local/cos-e2e-persist && mkdir -p /home/alice && sync"
    )
    vm.reboot()

    assert vm.sh("test -e /etc/cos-e2e-ephemeral").rc != 0
    assert vm.ok("cat /root/cos-e2e-persist").strip() == "kept"
    assert vm.ok("cat /usr/local/cos-e2e-persist").strip() == "kept"
    assert vm.ok("test -d /home/alice && echo yes").strip() == "yes"
    assert vm.ok("cat /etc/machine-id").strip() == machine_id


def test_efi_boot(vm_factory) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("efi")
    vm.start()
    vm.wait_multi_user()
    assert vm.ok("test -d /sys/firmware/efi && echo efi").strip() == "efi"
    assert vm.ok("test -e /run/cos/active_mode && echo yes").strip() == "yes"
    assert vm.ok("findmnt -no OPTIONS /").split(",")[0] == "ro"
