"""One cloud-config given to build-disk configures the booted system in every stage."""

from __future__ import annotations

import crypt
import json

import pytest

from tests.support.images import cached_disk

pytestmark = pytest.mark.e2e

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e e2e@test"
HASH = crypt.crypt("e2e-password", "$6$e2esalt0$")

CLOUD_CONFIG = f"""
name: e2e
stages:
  rootfs:
    - name: rootfs marker
      commands: ["mkdir -p /run/e2e && echo rootfs > /run/e2e/rootfs"]
  initramfs:
    - name: initramfs marker
      hostname: e2e-node
      commands: ["echo initramfs > /etc/e2e-initramfs"]
  fs:
    - name: a step that fails
      commands: ["echo e2e-fs-failure >&2; exit 3"]
  boot:
    - name: user
      users:
        alice:
          passwd: "{HASH}"
          groups: [sudo]
          shell: /bin/bash
          ssh_authorized_keys: ["{KEY}"]
      commands: ["echo boot > /run/e2e/boot"]
    - name: files and a unit
      files:
        - path: /home/alice/note
          permissions: 0600
          ownerstring: alice
          content: "hello {{{{ .Values.os.vendor }}}}"
        - path: /etc/systemd/system/e2e-hello.service
          permissions: 0644
          content: |
            [Unit]
            Description=e2e hello
            [Service]
            Type=oneshot
            ExecStart=/bin/true
            [Install]
            WantedBy=multi-user.target
      systemctl:
        enable: [e2e-hello.service]
  network:
    - name: network marker
      commands: ["echo network > /run/e2e/network"]
"""


def test_cloud_config_runs_in_every_stage(vm_factory) -> None:  # type: ignore[no-untyped-def]
    disk = cached_disk("cloud-init", CLOUD_CONFIG)
    vm = vm_factory("bios", base=disk)
    vm.start()
    vm.wait_multi_user()

    assert vm.ok("cat /run/e2e/rootfs /etc/e2e-initramfs /run/e2e/boot").split() == [
        "rootfs",
        "initramfs",
        "boot",
    ]
    vm.ok("systemctl is-active --wait cos-setup-network.service || true")
    assert vm.ok("cat /run/e2e/network").strip() == "network"
    assert vm.ok("hostname").strip() == "e2e-node"

    passwd = vm.ok("getent passwd alice").strip().split(":")
    assert passwd[5:] == ["/home/alice", "/bin/bash"]
    assert vm.ok("getent shadow alice").split(":")[1] == HASH
    assert "alice" in vm.ok("id -nG alice").split() and "sudo" in vm.ok("id -nG alice").split()
    ak = vm.ok(
        "stat -c '%a %U' /home/alice/.ssh/authorized_keys && cat /home/alice/.ssh/authorized_keys"
    )
    assert ak.splitlines() == ["600 alice", KEY]
    assert vm.ok("stat -c '%a %U %G' /home/alice/note").strip() == "600 alice alice"
    assert vm.ok("cat /home/alice/note").strip() == "hello debian"
    assert vm.ok("systemctl is-enabled e2e-hello.service").strip() == "enabled"

    # The failing fs step: its unit failed, the message reached the console, boot went on.
    assert vm.sh("systemctl is-failed cos-setup-fs.service").out.strip() == "failed"
    assert "e2e-fs-failure" in vm.console() or "exited 3" in vm.console()
    assert vm.ok("systemctl is-active cos-setup-boot.service").strip() == "active"
    assert json.loads(vm.ok("cos status --json"))["mode"] == "active"
