"""The derivative disk boots, BIOS and EFI, into the immutable layout (issue: bootable disk)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import NEXT_RELEASE
from tests.e2e.test_lifecycle import OVERLAY_UNDER_VAR_LIB
from tests.support.images import cached_disk
from tests.support.vm import overlay

pytestmark = pytest.mark.e2e


def _device_of_label(vm, label: str) -> str:  # type: ignore[no-untyped-def]
    return vm.ok(f"readlink -f /dev/disk/by-label/{label}").strip()


def test_bios_boot_immutable_layout_and_persistence(vm_factory) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("bios")
    vm.start()
    vm.wait_multi_user()

    # / is snapshot 1 (the default snapshotter): the image's layers, each an erofs image
    # on COS_STATE mounted through a loop device, stacked read-only by overlayfs.
    src, fstype, opts = vm.ok("findmnt -no SOURCE,FSTYPE,OPTIONS /").split()
    assert (src, fstype) == ("cos-root", "overlay") and "ro" in opts.split(",")
    assert vm.ok("cat /run/cos/image").strip() == ".snapshots/1"
    layers = vm.ok("cat /run/cos/state/.snapshots/1/layers").split()
    for i, layer in enumerate(layers):
        lsrc, lfs = vm.ok(f"findmnt -no SOURCE,FSTYPE /run/cos/layers/{i}").split()
        assert lfs == "erofs" and lsrc.startswith("/dev/loop"), (layer, lsrc, lfs)
        backing = vm.ok(f"losetup -nO BACK-FILE {lsrc}").strip()
        assert backing.endswith(f".snapshots/{layer}"), (layer, backing)
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

    # Container state is a plain bind from COS_PERSISTENT, so a runtime's overlay works there.
    assert vm.ok("findmnt -no FSTYPE --mountpoint /var/lib/containers").strip() == "ext4"
    vm.ok(OVERLAY_UNDER_VAR_LIB)

    # cos status tells what is booted.
    status = json.loads(vm.ok("cos status --json"))
    assert status["mode"] == "active" and status["booted_snapshot"] == 1
    assert status["snapshots"][0]["active"] and status["snapshots"][0]["source"].endswith(":e2e")
    assert status["snapshots"][0]["digest"].startswith("sha256:")
    assert "Booted:    active (snapshot 1)" in vm.console()
    assert vm.ok(". /etc/os-release; echo $IMAGE").strip() == "cos/vanilla:latest"
    # No default password: root is locked until cloud-config gives it keys or a hash.
    assert vm.ok("awk -F: '$1 == \"root\" {print $2}' /etc/shadow").strip()[:1] in ("*", "!")

    # The layout names the machine and keeps its machine-id on COS_PERSISTENT.
    machine_id = vm.ok("cat /etc/machine-id").strip()
    assert len(machine_id) == 32 and vm.ok("hostname").strip() == f"cos-{machine_id[:6]}"

    vm.ok(
        "echo gone > /etc/cos-e2e-ephemeral && echo kept > /root/cos-e2e-persist"
        " && echo kept > /usr/local/cos-e2e-persist && mkdir -p /home/alice && sync"
    )
    # A boot step that fails: the trail keeps it, status and logs name it after the reboot.
    vm.ok(
        "printf 'stages:\\n  boot:\\n    - name: e2e fails\\n      commands: [\"false\"]\\n'"
        " > /oem/96_e2e_fails.yaml && sync"
    )
    vm.reboot()

    status_text = vm.ok("cos status")
    m = re.search(r"Last boot: boot (\d+): 1 step\(s\) failed in stage boot", status_text)
    assert m, status_text
    record = json.loads(vm.ok(f"cos logs --boot {m[1]} --json"))
    boot_stage = next(st for st in record["stages"] if st["stage"] == "boot")
    failed = [st for st in boot_stage["steps"] if st["status"] == "failed"]
    assert len(failed) == 1 and "false" in failed[0]["detail"]
    assert {st["stage"] for st in record["stages"]} >= {"rootfs", "initramfs", "fs", "network"}
    # No cloud-config names rootfs, initramfs, fs or network: the initrd's shell layout
    # and the units' conditions started no Python for them.
    not_started = {st["stage"] for st in record["stages"] if st.get("skipped")}
    assert not_started == {"rootfs", "initramfs", "fs", "network"}, record["stages"]
    assert vm.ok("systemctl show -p ConditionResult --value cos-setup-fs").strip() == "no"
    assert record["mode"] == "active" and record["snapshot"] == 1
    assert "FAILED" in vm.ok(f"cos logs --boot {m[1]}")
    vm.ok("rm /oem/96_e2e_fails.yaml")

    assert vm.sh("test -e /etc/cos-e2e-ephemeral").rc != 0
    assert vm.ok("cat /root/cos-e2e-persist").strip() == "kept"
    assert vm.ok("cat /usr/local/cos-e2e-persist").strip() == "kept"
    assert vm.ok("test -d /home/alice && echo yes").strip() == "yes"
    assert vm.ok("cat /etc/machine-id").strip() == machine_id


def test_efi_boot_of_a_debian_13_qcow2_disk(vm_factory) -> None:  # type: ignore[no-untyped-def]
    """The suite's second distribution boots by EFI (by BIOS: the major-release
    upgrade of test_lifecycle), from a qcow2 disk."""
    qcow2 = cached_disk("qcow2", args=("--type", "qcow2"), distro=NEXT_RELEASE)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(qcow2)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    vm = vm_factory("efi", base=qcow2)
    vm.start()
    vm.wait_multi_user()
    assert vm.ok("test -d /sys/firmware/efi && echo efi").strip() == "efi"
    assert vm.ok("test -e /run/cos/active_mode && echo yes").strip() == "yes"
    assert vm.ok("findmnt -no OPTIONS /").split(",")[0] == "ro"
    assert vm.ok(". /etc/os-release; echo $VERSION_ID").strip() == "13"
    st = json.loads(vm.ok("cos status --json"))  # the toolkit on Python 3.13
    assert (st["mode"], st["booted_snapshot"]) == ("active", 1)


def test_expandable_disk_grown_3x_deploys_itself(vm_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """build-disk --expandable, the disk file grown to 3x: the first boot lands in
    recovery, adds state and persistent (the rest of the disk), deploys the system and
    reboots into it, with no command typed."""
    small = cached_disk("expandable", args=("--expandable",))
    size = 3 * small.stat().st_size
    vm = vm_factory("bios", disk=overlay(small, tmp_path / "grown.qcow2", size))
    vm.start()
    for _ in range(3):  # recovery (expands, deploys, reboots), then active
        vm.wait_agent(timeout=1200)
        if vm.sh("test -e /run/cos/active_mode").rc == 0:
            break
    else:
        raise AssertionError("never booted into active:\n" + vm.console()[-3000:])
    state = vm.sh("systemctl is-system-running --wait", timeout=300).out.strip()
    assert state in ("running", "degraded"), state
    assert "stage boot: /oem/00_expand-disk.yaml" in vm.console()

    st = json.loads(vm.ok("cos status --json"))
    assert (st["mode"], st["booted_snapshot"]) == ("active", 1)
    assert st["snapshots"][0]["from_action"] == "reset"
    assert vm.sh("test -e /oem/00_expand-disk.yaml").rc != 0  # done for good

    table = json.loads(vm.ok("sfdisk --json /dev/vda"))["partitiontable"]
    parts = {p["name"]: p for p in table["partitions"]}
    assert list(parts) == ["bios", "efi", "oem", "recovery", "state", "persistent"]
    assert int(vm.ok("blockdev --getsize64 /dev/vda")) == size
    assert parts["state"]["size"] * 512 == 8192 * 2**20
    persistent = parts["persistent"]
    end = (persistent["start"] + persistent["size"]) * 512
    assert size - end < 2 * 2**20, (size, end)  # up to the backup GPT at the disk's end
    # /usr/local is that partition, and its filesystem spans it.
    dev = vm.ok("findmnt -no SOURCE /usr/local").strip()
    assert dev == persistent["node"] and "COS_PERSISTENT" in vm.ok(f"blkid {dev}")
    fs_bytes = int(vm.ok("df -B1 --output=size /usr/local").split()[-1])
    assert fs_bytes > 0.85 * persistent["size"] * 512
