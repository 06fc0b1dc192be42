"""Build-time hooks from an image run where a hostile image cannot reach the build
machine: own mount, PID, IPC, UTS and network namespaces, steps confined to the tree."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.cloudinit.hooks import run_sandboxed_hook
from tests.conftest import need

pytestmark = pytest.mark.integration

HOOK = """
stages:
  after-disk-chroot:
    - name: a hook that reaches for the build machine
      hostname: taken-over
      commands:
        - busybox hostname taken-over-too
        - >-
          printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 127.0.0.1 {port} > /fetched
          && busybox grep -q 200 /fetched || echo blocked > /net
        - echo $$ > /pid
        - busybox mount -t tmpfs none /mnt && echo mounted > /mnt/x
"""


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def _tree(tmp_path: Path, port: int) -> Path:
    need("busybox", "unshare", root=True)
    tree = tmp_path / "tree"
    for d in ("bin", "etc", "mnt", "system/oem", "tmp"):
        (tree / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", tree / "bin/busybox")
    (tree / "bin/sh").symlink_to("busybox")
    (tree / "etc/hostname").write_text("image\n")
    (tree / "system/oem/50_hook.yaml").write_text(HOOK.format(port=port))
    return tree


def test_a_hostile_hook_touches_nothing_of_the_build_machine(tmp_path: Path, server: int) -> None:
    tree = _tree(tmp_path, server)
    host_name = socket.gethostname()
    mounts_before = Path("/proc/self/mountinfo").read_text().count("\n")
    run_sandboxed_hook("after-disk-chroot", [str(tree / "system/oem")], tree, network=False)
    assert socket.gethostname() == host_name  # its own UTS namespace
    assert (tree / "etc/hostname").read_text().strip() == "taken-over"  # the tree's, changed
    assert (tree / "net").read_text().strip() == "blocked"  # no network
    assert b"200" not in (tree / "fetched").read_bytes()
    assert int((tree / "pid").read_text()) < 100  # a PID namespace of its own
    assert Path("/proc/self/mountinfo").read_text().count("\n") == mounts_before
    assert not (tree / "mnt/x").exists()  # its mount went with its namespace


def test_the_network_is_there_when_the_config_allows_it(tmp_path: Path, server: int) -> None:
    tree = _tree(tmp_path, server)
    run_sandboxed_hook("after-disk-chroot", [str(tree / "system/oem")], tree, network=True)
    assert (tree / "fetched").exists() and not (tree / "net").exists()
