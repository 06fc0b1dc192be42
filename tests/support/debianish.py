"""Small trees that look like a Debian system to dpkg's database readers: files, their
packages' `.list` files, a `status`, merged /usr — with every time set, so two trees
made alike are alike to the nanosecond."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

MTIME = 1_700_000_000_123_456_789  # ns: sub-second on purpose

# package -> {path: content}; "/lib/..." lives in /usr/lib (merged /usr)
PACKAGES: dict[str, dict[str, bytes]] = {
    "base-files": {"/etc/os-release": b"ID=debian\nVERSION_ID=12\n", "/etc/issue": b"Debian\n"},
    "libc6:amd64": {
        "/lib/x86_64-linux-gnu/libc.so.6": b"\x7fELF" + bytes(range(256)) * 40,
        "/usr/share/doc/libc6/copyright": b"GPL\n",
    },
    "coreutils": {"/usr/bin/ls": b"ls" * 5000, "/usr/bin/cat": b"cat" * 3000},
    "less": {"/usr/bin/less": b"less v1\n" * 100, "/usr/share/doc/less/copyright": b"GPL\n"},
    "tiny": {"/usr/share/tiny/a": b"a\n"},
}
VERSIONS = {p: "1.0" for p in PACKAGES}
UNOWNED = {
    "/usr/lib/cos/cos": b"#!/bin/sh\n",
    "/boot/vmlinuz": b"kernel" * 2000,
    "/var/log/dpkg.log": b"log\n",
    "/opt/thing/data": b"data\n",
    "/etc/hostname": b"cos\n",
}


def _status(versions: dict[str, str]) -> bytes:
    paras = []
    for pkg, version in sorted(versions.items()):
        name, _, arch = pkg.partition(":")
        paras.append(
            f"Package: {name}\nStatus: install ok installed\nArchitecture: {arch or 'all'}\n"
            f"Version: {version}\nDescription: {name}\n multi-line\n"
        )
    paras.append("Package: removed\nStatus: deinstall ok config-files\nVersion: 1\n")
    return "\n".join(paras).encode()


def make_tree(
    root: Path,
    packages: dict[str, dict[str, bytes]] | None = None,
    versions: dict[str, str] | None = None,
    unowned: dict[str, bytes] | None = None,
    dpkg: bool = True,
    shuffle: int | None = None,
) -> Path:
    """Create the tree at root; shuffle (a seed) creates its entries in another order."""
    packages = PACKAGES if packages is None else packages
    versions = VERSIONS if versions is None else versions
    files: dict[str, bytes] = dict(UNOWNED if unowned is None else unowned)
    for owned in packages.values():
        for path, data in owned.items():
            files.setdefault(path, data)
    if dpkg:
        info = "/var/lib/dpkg/info"
        for pkg, owned in packages.items():
            dirs = sorted({str(Path(p).parent) for p in owned} | {"/."})
            files[f"{info}/{pkg}.list"] = "\n".join([*dirs, *sorted(owned)]).encode() + b"\n"
            files[f"{info}/{pkg}.md5sums"] = f"{versions[pkg]}\n".encode()
        files["/var/lib/dpkg/status"] = _status(versions)
        # a file two packages claim: the first by name owns it
        files[f"{info}/tiny.list"] += b"/usr/bin/cat\n"
    # merged /usr: /lib/x of the lists is usr/lib/x in the tree
    files = {("/usr" + p if p.startswith("/lib/") else p): d for p, d in files.items()}
    order = sorted(files)
    if shuffle is not None:
        random.Random(shuffle).shuffle(order)
    root.mkdir(parents=True, exist_ok=True)
    for path in order:
        full = root / path.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(files[path])
        full.chmod(0o755 if "/bin/" in path else 0o644)
    (root / "usr/bin/dir").parent.mkdir(parents=True, exist_ok=True)
    os.link(root / "usr/bin/ls", root / "usr/bin/dir")  # a hard link across names
    os.symlink("usr/lib", root / "lib")
    os.symlink("/usr/bin/less", root / "usr/bin/pager")
    os.mkfifo(root / "run-fifo")
    (root / "empty-dir").mkdir()
    long = root / "usr/share" / ("l" * 120) / "ünïcode-näme"
    long.parent.mkdir(parents=True)
    long.write_bytes(b"long\n")
    with contextlib.suppress(OSError):  # a filesystem without user xattrs
        os.setxattr(root / "usr/bin/ls", "user.cos-test", b"\x00\xffbinary")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, ns=(MTIME, MTIME), follow_symlinks=False)
    os.utime(root, ns=(MTIME, MTIME))
    return root
