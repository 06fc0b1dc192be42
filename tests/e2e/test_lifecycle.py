"""The OS lifecycle in real VMs: upgrade from the host registry, rollback, downgrade from
a passive boot, and the automatic fallback from an upgrade that cannot boot."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from tests.e2e.conftest import GuestRegistry
from tests.support.images import LAYOUT, LOOP_DISK_CONFIG, cached_disk
from tests.support.signing import key_pair, sign

pytestmark = pytest.mark.e2e

HOOKS = """
name: upgrade hooks
stages:
  before-upgrade:
    - commands: ["echo before >> /usr/local/e2e-hooks"]
  after-upgrade-chroot:
    - files:
        - {path: /etc/e2e-chroot-hook, permissions: 0644, content: "made in the new tree\\n"}
      commands: ["test -e /proc/self/status && echo proc >> /etc/e2e-chroot-hook"]
  after-upgrade:
    - commands: ["echo after >> /usr/local/e2e-hooks"]
"""

HANG = """
name: an upgrade hook that leaves a boot hanging before multi-user
stages:
  after-upgrade-chroot:
    - files:
        - path: /etc/systemd/system/e2e-hang.service
          permissions: 0644
          content: |
            [Unit]
            Description=e2e: a start that never finishes
            Before=multi-user.target
            [Service]
            Type=oneshot
            TimeoutStartSec=infinity
            ExecStart=/bin/sleep infinity
        - path: /etc/cos/config.d/90-e2e-trial.yaml
          permissions: 0644
          content: "trial-timeout: 30\\n"
      commands:
        - mkdir -p /etc/systemd/system/multi-user.target.wants
        - ln -sf ../e2e-hang.service /etc/systemd/system/multi-user.target.wants/
"""


# What a container runtime's overlay snapshotter does under its state directory.
OVERLAY_UNDER_VAR_LIB = (
    "d=/var/lib/containers/e2e && mkdir -p $d/l $d/u $d/w $d/m && echo low > $d/l/f"
    " && mount -t overlay overlay -o lowerdir=$d/l,upperdir=$d/u,workdir=$d/w $d/m"
    ' && echo up > $d/m/f && test "$(cat $d/u/f)" = up && umount $d/m'
)


# The grubenv variables that make GRUB boot anything but the `active` entry.
GRUB_CHOICES = ("next_entry", "saved_entry", "cos_trial", "cos_tries", "cos_fallback")


def _status(vm) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(vm.ok("cos status --json"))


def _snap(status: dict, n: int) -> dict:  # type: ignore[type-arg]
    return {s["number"]: s for s in status["snapshots"]}[n]


def _booted(vm) -> tuple[str, int, str]:  # type: ignore[no-untyped-def]
    st = _status(vm)
    tag = vm.ok(". /etc/os-release; echo $IMAGE_TAG").strip()
    return st["mode"], st["booted_snapshot"], tag


def _wait_good(vm, n: int) -> None:  # type: ignore[no-untyped-def]
    vm.ok("systemctl start cos-mark-good.service", timeout=120)
    assert _snap(_status(vm), n)["boot_assessment"] == "good"


def _wait_network(vm) -> None:  # type: ignore[no-untyped-def]
    vm.ok("timeout 90 sh -c 'until ip -4 route | grep -q default; do sleep 1; done'", timeout=100)


def _layers(tag: str) -> set[str]:

    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{LAYOUT}:{tag}"], capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out)["Layers"])


def test_upgrade_rollback_downgrade_from_passive(vm_factory, guest_registry: GuestRegistry) -> None:  # type: ignore[no-untyped-def]
    vm = vm_factory("bios", net=True)
    vm.start()
    vm.wait_multi_user()
    _wait_network(vm)
    vm.ok(f"cat > /oem/95_e2e_hooks.yaml <<'EOF'\n{HOOKS}\nEOF")
    before = guest_registry.blob_gets("cos/e2e")

    # Signatures required (until the next boot: /etc is ephemeral): unsigned v2 is
    # refused before anything is written, then signed on the host and accepted.
    key_file, pub_file = key_pair(guest_registry.log.parent)
    pub = pub_file.read_text()
    vm.ok(f"cat > /etc/cos/cosign.pub <<'EOF'\n{pub}EOF")
    vm.ok(
        "mkdir -p /etc/cos/config.d && printf 'verify: true\\ncosign-key: /etc/cos/cosign.pub\\n'"
        " > /etc/cos/config.d/50-verify.yaml"
    )
    st0 = _status(vm)
    r = vm.sh(f"cos upgrade --system {guest_registry.v2} --tls-verify=false")
    assert r.rc == 4 and "not signed" in r.err, r.err
    assert _status(vm)["snapshots"] == st0["snapshots"]
    sign(f"{guest_registry.host}/cos/e2e:v2", key_file)

    # --bootloader: GRUB is rewritten from v2 (new ESP filesystem); the reboot proves it.
    out = vm.ok(
        f"cos upgrade --bootloader --system {guest_registry.v2} --tls-verify=false 2>&1",
        timeout=1200,
    )
    assert "Switching to snapshot 2" in out and "Installing GRUB from snapshot 2" in out, out
    assert "Signature of" in out and "verified" in out, out
    # Only the layer v2 adds travelled: the disk's layer store already held the rest.
    fetched = guest_registry.blob_gets("cos/e2e") - before
    added = _layers("e2e-v2") - _layers("e2e")
    assert added and added <= fetched and not fetched & _layers("e2e")
    assert vm.ok("cat /usr/local/e2e-hooks").split() == ["before", "after"]
    st = _status(vm)
    assert st["trial"] == {"snapshot": 2, "tries_left": 3, "fallback": 1}
    assert _snap(st, 2)["active"] and _snap(st, 2)["source"] == guest_registry.v2

    vm.reboot()
    assert _booted(vm) == ("active", 2, "v2")
    assert vm.ok("cat /etc/cos-e2e-version").strip() == "v2"
    assert vm.ok("cat /etc/e2e-chroot-hook").split() == ["made", "in", "the", "new", "tree", "proc"]
    _wait_good(vm, 2)
    st = _status(vm)
    assert st["trial"] is None
    assert not _snap(st, 1)["active"] and _snap(st, 1)["from_action"] == "build-disk"
    assert _snap(st, 2)["from_action"] == "upgrade"

    # Rollback: the previous snapshot boots, as active, from now on.
    vm.ok("cos rollback")
    vm.reboot()
    assert _booted(vm) == ("active", 1, "latest")

    # Boot snapshot 2 (v2) once, as passive, and downgrade from there to v1: snapshot 3.
    # The active snapshot already is v1, so without --force there is nothing to do.
    vm.ok("cos rollback 2 --once")
    vm.reboot()
    assert _booted(vm) == ("passive", 2, "v2")
    assert vm.ok("cat /run/cos/image").strip() == ".snapshots/2"
    assert vm.ok("findmnt -no SOURCE /usr/local").strip()  # passive keeps persistent data
    out = vm.ok(f"cos upgrade --system {guest_registry.v1} --tls-verify=false 2>&1", timeout=600)
    assert "Already up to date" in out
    vm.ok(f"cos upgrade --force --system {guest_registry.v1} --tls-verify=false", timeout=1200)
    st = _status(vm)
    assert st["trial"] == {"snapshot": 3, "tries_left": 3, "fallback": 2}
    # Layers snapshots (the default) keep 4; snapshot 3 is v1 again, whose layers
    # snapshots 1 and 2 already hold: it costs its own small top and nothing else.
    assert st["snapshotter"] == "layers"
    assert sorted(s["number"] for s in st["snapshots"]) == [1, 2, 3]
    assert _snap(st, 3)["bytes"] < 4 * 2**20 < 100 * 2**20 < st["snapshots_bytes"], st
    # (Booting a layers snapshot after an upgrade was shown with snapshot 2 above.)


def test_a_move_to_layers_that_hangs_falls_back_to_loop(
    vm_factory, guest_registry: GuestRegistry
) -> None:  # type: ignore[no-untyped-def]
    """A disk installed with loop snapshots: its next upgrade moves it to layers (the
    default), and that snapshot hangs before multi-user and panics nowhere. Its trial
    deadline reboots it, its one try is spent, and GRUB falls back across kinds, with
    nobody at the machine."""
    vm = vm_factory("bios", net=True, base=cached_disk("loop", config=LOOP_DISK_CONFIG))
    vm.start()
    vm.wait_multi_user()
    _wait_network(vm)
    vm.ok(f"cat > /oem/95_e2e_hang.yaml <<'EOF'\n{HANG}\nEOF")
    # One try instead of the default three (the upgrade scenario checks that default):
    # each try is a whole boot under emulation.
    vm.ok("mkdir -p /etc/cos/config.d && echo 'boot-attempts: 1' > /etc/cos/config.d/90-e2e.yaml")
    assert vm.ok("readlink /run/cos/state/.snapshots/active").strip() == "1/snapshot.img"
    # A container runtime's overlay works on the loop snapshot too (test_boot: on layers).
    vm.ok(OVERLAY_UNDER_VAR_LIB)
    out = vm.ok(f"cos upgrade --system {guest_registry.v2} --tls-verify=false 2>&1", timeout=1200)
    # GRUB on the ESP is rewritten first (the new menu boots both kinds); snapshot 2 is
    # a stack of layers, snapshot 1 stays a loop image.
    assert "Moving to layers snapshots: GRUB is updated first" in out, out
    assert vm.ok("readlink /run/cos/state/.snapshots/active").strip() == "2"
    st = _status(vm)
    assert st["snapshotter"] == "layers"
    assert st["trial"] == {"snapshot": 2, "tries_left": 1, "fallback": 1}

    vm.start_reboot()
    vm.wait_agent(600)  # the trial boot: its agent answers, multi-user never comes
    vm.wait_agent(900)  # the boot after the deadline's reboot
    state = vm.sh("systemctl is-system-running --wait", timeout=600).out.strip()
    assert state in ("running", "degraded"), state
    console = vm.console()
    assert console.count("cos: trial boot of snapshot 2 (0 more after this one)") == 1
    assert "trial boot of snapshot 2: it has 30 s to confirm a good boot" in console
    assert "snapshot 2 did not confirm a good boot; booting snapshot 1" in console
    # GRUB took each kind's own path: 2's kernel as a plain file, 1's from its image.
    assert "Loading the kernel of /.snapshots/active (active)" in console
    assert "Loading /boot/vmlinuz from /.snapshots/1/snapshot.img (passive)" in console
    st = _status(vm)
    assert (st["mode"], st["booted_snapshot"]) == ("passive", 1)
    assert st["upgrade_failure"]["snapshot"] == 2
    assert json.loads(vm.ok("cat /run/cos/upgrade_failure"))["booted"] == 1
    assert _snap(st, 2)["boot_assessment"] == "failed"
    assert _snap(st, 1)["active"] and st["trial"] is None

    # The failure was rolled back for good: what GRUB reads to choose the next boot
    # (no trial, no one-shot or saved entry: `active`) and the active link say snapshot 1.
    env = vm.ok("grub-editenv /oem/grubenv list").splitlines()
    assert not [v for v in env if v.split("=")[0] in GRUB_CHOICES], env
    assert vm.ok("readlink /run/cos/state/.snapshots/active").strip() == "1/snapshot.img"


def test_recovery_resets(vm_factory, guest_registry: GuestRegistry) -> None:  # type: ignore[no-untyped-def]
    """From recovery boots: a reset from the recovery image that keeps persistent data;
    then a reset from a registry image that wipes it. (`cos install` onto a blank disk
    boots in test_iso's unattended install and runs in the integration tier; a pull from
    the registry in recovery is the second reset's, the code an install would use.)"""
    vm = vm_factory("bios", net=True)
    vm.start()
    vm.wait_multi_user()
    vm.ok("echo kept > /usr/local/e2e-persist && echo kept > /root/e2e-root && sync")

    # Reset from the recovery image: state is redeployed, persistent data survives.
    vm.ok("grub-editenv /oem/grubenv set next_entry=recovery")
    vm.reboot()
    # Recovery: the squashfs of COS_RECOVERY (through its boot link) is /, and the
    # persistent partition is never mounted.
    assert _status(vm)["mode"] == "recovery"
    assert vm.sh("test -e /run/cos/active_mode").rc != 0
    src = vm.ok("findmnt -no SOURCE /").strip()
    assert re.search(r"/boot\.\d+/recovery\.img$", vm.ok(f"losetup -nO BACK-FILE {src}").strip())
    assert vm.ok("findmnt -no FSTYPE /").strip() == "squashfs"
    assert vm.sh("findmnt /usr/local").rc != 0
    r = vm.sh("cos upgrade --system x/y:z")
    assert r.rc == 7 and "recovery mode" in r.err
    vm.ok("cos reset 2>&1", timeout=1500)
    vm.reboot()
    st = _status(vm)
    assert (st["mode"], st["booted_snapshot"]) == ("active", 1)
    assert [(s["number"], s["from_action"]) for s in st["snapshots"]] == [(1, "reset")]
    assert vm.ok("cat /usr/local/e2e-persist /root/e2e-root").split() == ["kept", "kept"]

    # Reset from a registry image, wiping persistent data.
    vm.ok("grub-editenv /oem/grubenv set next_entry=recovery")
    vm.reboot()
    _wait_network(vm)
    vm.ok(
        f"cos reset --reset-persistent --system {guest_registry.v2} --tls-verify=false",
        timeout=1500,
    )
    # The booted disk is in use: refused, nothing written.
    r = vm.sh(f"cos install /dev/vda --system {guest_registry.v1} --tls-verify=false")
    assert r.rc == 5 and "in use" in r.err, r.err
    vm.reboot()
    st = _status(vm)
    assert _booted(vm) == ("active", 1, "v2")
    assert st["snapshots"][0]["source"] == guest_registry.v2
    assert vm.sh("test -e /usr/local/e2e-persist").rc != 0
    assert vm.sh("test -e /root/e2e-root").rc != 0


def test_power_loss_and_a_major_release_upgrade(
    vm_factory, guest_registry: GuestRegistry, guest_next_release: str
) -> None:  # type: ignore[no-untyped-def]
    """Hard resets while a layer image is written and at the switch: every next boot
    reaches multi-user in a complete snapshot. Then the machine, installed from Debian
    12, upgrades to the Debian 13 image and its GRUB, boots its kernel, and `cos
    rollback` brings 12 back: a major release as one image switch. (Before the pull
    nothing is written: a reset there is any unclean reset, which each of these is too;
    the host's kill tests cut at random instants.)"""
    vm = vm_factory("bios", net=True)
    vm.start()
    vm.wait_multi_user()
    assert vm.ok(". /etc/os-release; echo $VERSION_ID").strip() == "12"
    kernel12 = vm.ok("uname -r").strip()
    v1, v2 = guest_registry.v1, guest_registry.v2
    # v2's own layer is unpacked by an upgrade to v2 only: v1's are all on the disk.
    cuts = [(v2, "Unpacking layer"), (v1, "Switching to snapshot")]
    for ref, point in cuts:
        _wait_network(vm)
        vm.ok(
            f"nohup cos upgrade --force --tls-verify=false --system {ref}"
            " > /run/e2e-upgrade.log 2>&1 &"
        )
        deadline = time.monotonic() + 900
        while point not in vm.sh("cat /run/e2e-upgrade.log").out:
            assert time.monotonic() < deadline, vm.sh("cat /run/e2e-upgrade.log").out
            time.sleep(0.3)
        vm.hard_reset()
        vm.wait_multi_user(timeout=900)
        st = _status(vm)
        booted = st["booted_snapshot"]
        assert st["mode"] == "active", (point, st)
        assert vm.sh(f"test -e /run/cos/state/.snapshots/{booted}/.partial").rc != 0, point
        assert booted in [s["number"] for s in st["snapshots"]], (point, st)
        assert vm.ok(". /etc/os-release; echo $VERSION_ID").strip() == "12", point
        vm.ok("systemctl start cos-mark-good.service", timeout=120)

    # --bootloader: GRUB 2.12 of Debian 13 replaces 12's on the ESP and in the BIOS boot
    # area, and boots both releases from here on.
    _wait_network(vm)
    out = vm.ok(
        f"cos upgrade --bootloader --tls-verify=false --system {guest_next_release} 2>&1",
        timeout=1800,
    )
    assert "Switching to snapshot" in out and "Installing GRUB from snapshot" in out, out
    assert not vm.ok("ls /run/cos/state/.snapshots/*/.partial 2>/dev/null || true").strip()
    trial = _status(vm)["trial"]
    vm.reboot()
    # Debian 13 with its own kernel, and the toolkit (on Python 3.13) reports it.
    assert _booted(vm) == ("active", trial["snapshot"], "trixie")
    assert vm.ok(". /etc/os-release; echo $VERSION_ID").strip() == "13"
    kernel13 = vm.ok("uname -r").strip()
    assert kernel13 != kernel12 and kernel13.startswith("6.12."), kernel13
    assert vm.ok("python3 -c 'import sys; print(sys.version_info[:2])'").strip() == "(3, 13)"
    _wait_good(vm, trial["snapshot"])

    # Back to the newest Debian 12 snapshot kept (the one the upgrade left, or the
    # complete v1 copy of the cut at the switch).
    vm.ok("cos rollback")
    vm.reboot()
    mode, booted, tag = _booted(vm)
    assert (mode, tag) == ("active", "latest") and booted != trial["snapshot"]
    assert vm.ok(". /etc/os-release; echo $VERSION_ID").strip() == "12"
    assert vm.ok("uname -r").strip() == kernel12
