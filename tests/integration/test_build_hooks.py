"""Build-time hooks from an image run where a hostile image cannot reach the build
machine: own mount, PID, IPC, UTS and network namespaces, a root of their own holding
the tree (the build machine's files are not there), steps confined to the tree."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.cloudinit.sandbox import run_sandboxed_hook
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


def _tree(tmp_path: Path, port: int, hook: str = HOOK) -> Path:
    need("busybox", "unshare", "setpriv", root=True)
    tree = tmp_path / "tree"
    for d in ("bin", "dev", "etc", "mnt", "proc", "sys", "system/oem", "tmp"):
        (tree / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "", tree / "bin/busybox")
    (tree / "bin/sh").symlink_to("busybox")
    (tree / "etc/hostname").write_text("image\n")
    (tree / "etc/os-release").write_text("NAME=image\n")
    (tree / "system/oem/50_hook.yaml").write_text(hook.format(port=port))
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


ESCAPE = """
stages:
  after-disk-chroot:
    - name: a hook that leaves its chroot for the build machine's files
      commands:
        - busybox cat /etc/os-release > /own
        - busybox mount -t proc proc /proc || true
        - busybox ls /proc/$PPID/root/ > /root-listing
        - busybox cat /proc/$PPID/root{secret} > /stolen || true
        - echo pwned > /proc/$PPID/root{outside}/written || true
        - echo pwned > /proc/$PPID/root{usr_file} || true
        - busybox mount -o remount,rw /proc/$PPID/root/usr && echo yes > /remounted || true
        - busybox mknod /disk b 8 0 && echo yes > /made-a-disk || true
        - busybox ls /dev > /dev-listing
"""


def test_a_hook_sees_the_tree_and_nothing_of_the_build_machine(tmp_path: Path) -> None:
    """From its chroot a step reaches the sandbox's root through /proc/$PPID/root (the
    root of the cos process running the stage): only the tree and read-only runtime
    binds are there, and it can neither remount them nor make a device node."""
    secret = tmp_path / "secret"
    secret.write_text("build machine secret\n")
    usr_file = Path(f"/usr/cos-test-{uuid.uuid4().hex}")  # must stay absent
    hook = ESCAPE.replace("{secret}", str(secret)).replace("{outside}", str(tmp_path))
    hook = hook.replace("{usr_file}", str(usr_file))
    tree = _tree(tmp_path, 0, hook.replace("{", "{{").replace("}", "}}"))
    try:
        run_sandboxed_hook("after-disk-chroot", [str(tree / "system/oem")], tree, network=False)
        assert not usr_file.exists()
    finally:
        usr_file.unlink(missing_ok=True)
    assert (tree / "own").read_text() == "NAME=image\n"  # the image's own files
    listing = (tree / "root-listing").read_text().split()
    assert "usr" in listing and "proc" in listing  # the sandbox's root was reached...
    for host_only in ("home", "var", "srv", "boot"):  # ...and the build machine's is not
        assert host_only not in listing or not Path("/" + host_only).exists(), listing
    assert "secret" not in (tree / "stolen").read_text()
    assert not (tmp_path / "written").exists()
    assert not (tree / "remounted").exists() and not (tree / "made-a-disk").exists()
    assert set((tree / "dev-listing").read_text().split()) <= {
        "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout",
        "stderr", "shm",
    }  # fmt: skip
    for d in ("dev", "proc", "sys"):
        assert not any((tree / d).iterdir())  # its mounts went with its namespace


def test_a_tree_below_the_builds_working_directory_is_the_tree_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox binds what Python's path holds read-only, and `python -m` puts the
    working directory there: a tree below it (a mount of its own, as a build's
    unpacked snapshot is) is still bound writable, with its mounts."""
    tree = _tree(tmp_path, 0, "stages:\n  after-disk-chroot:\n    - commands: [echo ran > /ran]\n")
    content = tmp_path / "content"
    shutil.copytree(tree, content, symlinks=True)
    shutil.rmtree(tree)
    tree.mkdir()
    subprocess.run(["mount", "--bind", str(content), str(tree)], check=True)
    try:
        monkeypatch.chdir(tmp_path)
        run_sandboxed_hook("after-disk-chroot", [str(tree / "system/oem")], tree, network=False)
        assert (content / "ran").read_text() == "ran\n"
    finally:
        subprocess.run(["umount", str(tree)], check=True)
