"""A changeset corpus: two layers whose upper one does everything a layer can do to
what lies below it. Unpackers and the layer stacks of sharing snapshots are compared
on it."""

from __future__ import annotations

import tarfile

from tests.support.malicious_layers import Layer


def changeset_layers(through_symlink: bool = True) -> list[bytes]:
    """Two layers covering what a changeset can do to a lower tree: whiteouts, opaque
    dirs, replacements of every kind, hard links, devices, FIFOs and xattrs."""
    cap = bytes([1, 0, 0, 2, 0, 0x20]) + bytes(14)  # security.capability v2: cap_net_raw
    ping = {
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.x": "v",
    }
    lower = (
        Layer()
        .dir("./", mode=0o751, mtime=77)
        .dir("etc", mtime=1234)
        .file("etc/a")
        .file("etc/shadow", mode=0o640, gid=42)
        .dir("usr", mtime=3)
        .dir("usr/lib", mtime=5)
        .symlink("lib", "usr/lib")
        .dir("d", mode=0o700, uid=5, pax={"SCHILY.xattr.user.old": "1"})
        .file("d/kept")
        .file("a", b"file")
        .dir("b")
        .file("b/c")
        .dir("c")
        .symlink("s", "c")
        .file("x", b"old")
        .dir("dir")
        .file("dir/old")
        .dir("od", mtime=99)
        .file("od/old")
        .dir("od/sub")
        .file("od/sub/old")
        .dir("bin")
        .file("bin/ping", b"p", mode=0o4755, pax=ping)
        .hardlink("bin/ping2", "bin/ping")
        .symlink("sym", "/etc/shadow")
        .hardlink("hsym", "sym")
        .dir("dev")
        .add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        .add("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0))
        .dir("run")
        .add("run/initctl", tarfile.FIFOTYPE, mode=0o600)
        .dir("m")
        .file("m/zero", mtime=0)
        .file("m/pax", pax={"mtime": "1700000000.5"})
        .bytes()
    )
    upper = Layer()
    if through_symlink:
        upper.file("lib/x.so")  # through the in-image symlink lib -> usr/lib
    upper = (
        upper.dir("etc", mtime=1234)
        .file("etc/b")
        .file("etc/.wh.a")
        .file("etc/.wh..wh.plnk")
        .dir("a", mode=0o711)  # dir over file
        .file("b", b"file")  # file over dir
        .dir("s")  # dir over symlink
        .dir("d", mode=0o755, pax={"SCHILY.xattr.user.new": "2"})  # dir over dir
        .file("x", b"new")
        .file(".wh.x")  # does not hide the same layer's x
        .dir("dir", mtime=55)
        .file("dir/new")
        .file(".wh.dir")  # removes the lower child only
        .dir("od", mtime=98)
        .file("od/new")
        .file("od/.wh..wh..opq")
        .dir("od/sub", mtime=97)
        .file("od/sub/new")
        .file(".wh.missing")
        .symlink("dangling", "/nowhere")
        .bytes()
    )
    return [lower, upper]
