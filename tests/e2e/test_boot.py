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


def test_recovery_entry_is_one_shot(vm_factory) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("bios")
    vm.start()
    vm.wait_multi_user()
    vm.ok("grub-editenv /oem/grubenv set next_entry=recovery")
    vm.reboot()

    assert vm.ok("test -e /run/cos/recovery_mode && echo yes").strip() == "yes"
    assert vm.sh("test -e /run/cos/active_mode").rc != 0
    src = vm.ok("findmnt -no SOURCE /").strip()
    assert vm.ok(f"losetup -nO BACK-FILE {src}").strip().endswith("/boot/recovery.img")
    assert vm.ok("findmnt -no FSTYPE /").strip() == "squashfs"
    # Recovery never mounts the persistent partition.
    assert vm.sh("findmnt /usr/local").rc != 0
    assert json.loads(vm.ok("cos status --json"))["mode"] == "recovery"

    # next_entry was consumed by GRUB: the following boot is active again.
    vm.reboot()
    assert vm.ok("test -e /run/cos/active_mode && echo yes").strip() == "yes"


def test_passive_entry_boots_a_kept_snapshot(vm_factory) -> None:  # type: ignore[no-untyped-def]
    """GRUB lists one entry per kept snapshot (passive_snaps) and boots it in passive mode."""
    vm = vm_factory("bios")
    vm.start()
    vm.wait_multi_user()
    # Keep a second snapshot by hand (upgrades do this for real) and point GRUB at it once.
    vm.ok(
        "mount -o remount,rw /run/cos/state && mkdir -p /run/cos/state/.snapshots/2"
        " && ln /run/cos/state/.snapshots/1/snapshot.img /run/cos/state/.snapshots/2/snapshot.img"
        " && mount -o remount,ro /run/cos/state"
        " && grub-editenv /oem/grubenv set passive_snaps=2 next_entry=passive2"
    )
    vm.reboot()
    assert vm.ok("test -e /run/cos/passive_mode && echo yes").strip() == "yes"
    src = vm.ok("findmnt -no SOURCE /").strip()
    assert vm.ok(f"losetup -nO BACK-FILE {src}").strip().endswith(".snapshots/2/snapshot.img")
    assert vm.ok("findmnt -no SOURCE /usr/local").strip()  # passive keeps persistent data
    assert json.loads(vm.ok("cos status --json"))["mode"] == "passive"
