"""The layer unpacker: changeset semantics, digest checks, and containment.

The tests that unpack trees need root (ownership, device nodes and trusted.* xattrs
are part of what is checked) and carry the `root` marker; the checks that refuse a
layout or a blob before anything is written run as any user. Every tree is built
from small tars made here.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cos.errors import ImageError
from cos.oci import streams
from cos.oci import unpack as unpack_mod
from cos.oci.unpack import unpack_image, unpack_layers
from tests.conftest import need
from tests.support.malicious_layers import (
    GZIP,
    MTIME,
    SHAPES,
    TAR,
    Layer,
    Shape,
    make_sandbox,
    oci_layout,
    snapshot,
    snapshot_diff,
    write_layers,
)

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def unpack(tmp_path: Path, *layers: bytes, media_type: str = TAR) -> Path:
    blobs = tmp_path / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(layers):
        p = blobs / f"{len(list(blobs.iterdir()))}-{i}"
        p.write_bytes(data)
        paths.append((p, media_type))
    dest = tmp_path / "rootfs"
    unpack_layers(paths, dest)
    return dest


def lst(path: Path) -> os.stat_result:
    return os.lstat(path)


# --- containment: the corpus -----------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_hostile_layer_changes_nothing_outside(shape: Shape, tmp_path: Path) -> None:
    box = make_sandbox(tmp_path)
    layers = write_layers(shape.build(box), tmp_path / "blobs")
    before = snapshot(box.root, box.dest)
    try:
        unpack_layers(layers, box.dest)
        outcome = "ok"
    except ImageError as exc:
        outcome = "error"
        assert exc.message and "\n" not in exc.message
        assert not os.path.lexists(box.dest), "a failed unpack must not leave a tree"
    after = snapshot(box.root, box.dest)
    assert after == before, "changed outside dest:\n" + snapshot_diff(before, after)
    assert outcome == shape.expect, f"{shape.id} ({shape.attack})"
    if outcome == "ok" and shape.check is not None:
        shape.check(box)


def _seed(box_abs: str) -> bytes:
    return (
        Layer()
        .dir("etc")
        .file("etc/a", b"x" * 700)
        .symlink("l", "etc")
        .symlink("out", box_abs)
        .hardlink("h", "etc/a")
        .file("p", pax={"SCHILY.xattr.user.a": "b", "mtime": "12.5"})
        .add("dev/null", tarfile.CHRTYPE, dev=(1, 3))
        .file("l/" + "é" * 60, b"y")
        .file("out/" + "z" * 90, b"z")
        .bytes()
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, 4095),
            st.sampled_from([0, 0x30, 0x31, 0x32, 0x35, ord("/"), ord("."), 0xFF, 0x80]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_corrupted_headers_fail_cleanly_and_stay_inside(
    tmp_path_factory: pytest.TempPathFactory, edits: list[tuple[int, int]]
) -> None:
    """Byte edits in the header area: ImageError or a tree, never a traceback or an escape."""
    base = tmp_path_factory.mktemp("fuzz")
    box = make_sandbox(base)
    data = bytearray(_seed(box.abs))
    for pos, value in edits:
        data[pos % len(data)] = value
    layers = write_layers([bytes(data)], base / "blobs")
    before = snapshot(box.root, box.dest)
    try:
        unpack_layers(layers, box.dest)
    except ImageError:
        assert not os.path.lexists(box.dest)
    after = snapshot(box.root, box.dest)
    assert after == before, snapshot_diff(before, after)
    shutil.rmtree(base)


def test_corpus_is_broad() -> None:
    assert len(SHAPES) >= 20
    assert len({s.id for s in SHAPES}) == len(SHAPES)


# --- changeset semantics ----------------------------------------------------------------


@pytest.mark.root
def test_types_modes_owners_and_times(tmp_path: Path) -> None:
    layer = (
        Layer()
        .dir("usr", mtime=1000)
        .dir("usr/bin", mtime=2000)
        .file("usr/bin/su", b"su", mode=0o4755, mtime=3000)
        .file("usr/bin/wall", b"w", mode=0o2755, gid=5)
        .dir("tmp", mode=0o1777)
        .dir("home/u", mode=0o700, uid=1000, gid=1000)
        .file("home/u/notes", b"n", mode=0o600, uid=1000, gid=1000, mtime=0)
        .symlink("bin", "usr/bin", mtime=4000)
        .symlink("dangling", "/nowhere/at/all")
        .add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        .add("dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0))
        .add("run/initctl", tarfile.FIFOTYPE, mode=0o600)
        .file("usr/share/big", os.urandom(3 << 20))
        .bytes()
    )
    root = unpack(tmp_path, layer)
    su = lst(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_mtime_ns == 3000 * 10**9
    assert stat.S_IMODE(lst(root / "usr/bin/wall").st_mode) == 0o2755
    assert lst(root / "usr/bin/wall").st_gid == 5
    assert stat.S_IMODE(lst(root / "tmp").st_mode) == 0o1777
    home = lst(root / "home/u")
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1000, 0o700)
    assert lst(root / "home/u/notes").st_mtime_ns == 0  # the epoch is kept, not "now"
    # directories keep their own entry's time although entries were added below them
    assert lst(root / "usr").st_mtime_ns == 1000 * 10**9
    assert lst(root / "usr/bin").st_mtime_ns == 2000 * 10**9
    assert os.readlink(root / "bin") == "usr/bin"
    assert lst(root / "bin").st_mtime_ns == 4000 * 10**9
    assert os.readlink(root / "dangling") == "/nowhere/at/all"
    null = lst(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3 and stat.S_IMODE(null.st_mode) == 0o666
    loop = lst(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), loop.st_gid) == (7, 6)
    assert stat.S_ISFIFO(lst(root / "run/initctl").st_mode)
    assert lst(root / "usr/share/big").st_size == 3 << 20
    # the root: root-owned 0755 when no layer says otherwise
    assert stat.S_IMODE(lst(root).st_mode) == 0o755 and lst(root).st_uid == 0


@pytest.mark.root
def test_root_entry_sets_the_root_attributes(tmp_path: Path) -> None:
    root = unpack(tmp_path, Layer().dir("./", mode=0o750, gid=7, mtime=5).file("f").bytes())
    st = lst(root)
    assert (stat.S_IMODE(st.st_mode), st.st_gid, st.st_mtime_ns) == (0o750, 7, 5 * 10**9)


@pytest.mark.root
def test_xattrs(tmp_path: Path) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    pax = {
        "SCHILY.xattr.user.plain": "value",
        "SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
        "LIBARCHIVE.xattr.user.from%20bsdtar": "YmluYXJ5AA",
    }
    root = unpack(
        tmp_path,
        Layer()
        .file("bin/ping", b"x", mode=0o755, pax=pax)
        .dir("d", pax={"SCHILY.xattr.user.d": "1"})
        .symlink("l", "d", pax={"SCHILY.xattr.trusted.l": "2"})
        .bytes(),
    )
    got = {k: os.getxattr(root / "bin/ping", k) for k in os.listxattr(root / "bin/ping")}
    assert got["user.plain"] == b"value"
    assert got["security.capability"] == cap  # binary, set after chown (which clears it)
    assert got["trusted.overlay.overlay.opaque"] == b"y"  # escaped, inert to overlayfs
    assert "trusted.overlay.opaque" not in got
    assert got.get("security.selinux", b"").find(b"shadow_t") < 0
    assert got["user.from bsdtar"] == b"binary\0"
    assert os.getxattr(root / "d", "user.d") == b"1"
    assert os.getxattr(root / "l", "trusted.l", follow_symlinks=False) == b"2"


@pytest.mark.root
def test_hardlinks(tmp_path: Path) -> None:
    root = unpack(
        tmp_path,
        Layer()
        .file("usr/bin/perl", b"perl", mode=0o755)
        .hardlink("usr/bin/perl5", "usr/bin/perl")
        .hardlink("usr/bin/perl6", "/usr/bin/perl")  # absolute: relative to the root
        .symlink("sym", "/etc/shadow")
        .hardlink("hsym", "sym")  # links the symlink itself, not what it points at
        .symlink("bin", "/usr/bin")
        .hardlink("via", "bin/perl")  # parents resolve inside the tree
        .bytes(),
    )
    ino = lst(root / "usr/bin/perl").st_ino
    assert lst(root / "usr/bin/perl5").st_ino == ino == lst(root / "usr/bin/perl6").st_ino
    assert lst(root / "via").st_ino == ino
    assert lst(root / "usr/bin/perl").st_nlink == 4
    assert os.readlink(root / "hsym") == "/etc/shadow"
    assert lst(root / "hsym").st_ino == lst(root / "sym").st_ino


def test_hardlink_to_a_missing_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="hard link"):
        unpack(tmp_path, Layer().hardlink("a", "b").bytes())


@pytest.mark.root
def test_whiteouts_remove_lower_entries(tmp_path: Path) -> None:
    lower = (
        Layer()
        .file("etc/passwd")
        .file("etc/shadow")
        .file("var/cache/a/b/c")
        .file("var/keep")
        .bytes()
    )
    upper = (
        Layer()
        .file("etc/.wh.shadow")
        .file("var/.wh.cache")
        .file(".wh.missing")
        .file("etc/.wh..wh.plnk")
        .bytes()
    )
    root = unpack(tmp_path, lower, upper)
    assert sorted(os.listdir(root / "etc")) == ["passwd"]
    assert sorted(os.listdir(root / "var")) == ["keep"]
    assert not any(".wh." in name for _, _, names in os.walk(root) for name in names)


@pytest.mark.root
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_opaque_directory_keeps_same_layer_entries(tmp_path: Path, where: str) -> None:
    lower = Layer().file("d/old").file("d/sub/old").file("keep").bytes()
    entries: list[tuple[str, bytes]] = [("d/new", b"new"), ("d/sub/new", b"new")]
    marker = ("d/.wh..wh..opq", b"")
    pos = {"first": 0, "middle": 1, "last": 2}[where]
    entries.insert(pos, marker)
    upper = Layer().dir("d")
    for name, data in entries:
        upper.file(name, data)
    root = unpack(tmp_path, lower, upper.bytes())
    assert sorted(os.listdir(root / "d")) == ["new", "sub"]
    assert sorted(os.listdir(root / "d/sub")) == ["new"]
    assert (root / "keep").exists()


@pytest.mark.root
def test_whiteout_does_not_hide_same_layer_entry(tmp_path: Path) -> None:
    lower = Layer().file("x", b"old").file("dir/old").bytes()
    upper = Layer().file("x", b"new").file(".wh.x").file("dir/new").file(".wh.dir").bytes()
    root = unpack(tmp_path, lower, upper)
    assert (root / "x").read_bytes() == b"new"
    assert os.listdir(root / "dir") == ["new"]  # the lower child went, the new one stayed


@pytest.mark.root
def test_replacements(tmp_path: Path) -> None:
    lower = (
        Layer()
        .file("a", b"file")
        .file("b/c")
        .dir("c")
        .symlink("s", "c")
        .dir("d", mode=0o700, uid=5, pax={"SCHILY.xattr.user.old": "1"})
        .file("d/kept")
        .bytes()
    )
    upper = (
        Layer()
        .dir("a", mode=0o711)  # dir over file
        .file("b", b"file")  # file over dir (whole tree goes)
        .dir("s")  # dir over symlink: the symlink goes, c stays untouched
        .dir("d", mode=0o755, pax={"SCHILY.xattr.user.new": "2"})  # dir over dir
        .bytes()
    )
    root = unpack(tmp_path, lower, upper)
    assert stat.S_ISDIR(lst(root / "a").st_mode)
    assert stat.S_IMODE(lst(root / "a").st_mode) == 0o711
    assert (root / "b").read_bytes() == b"file"
    assert stat.S_ISDIR(lst(root / "s").st_mode) and (root / "c").is_dir()
    d = lst(root / "d")
    assert (stat.S_IMODE(d.st_mode), d.st_uid) == (0o755, 0)
    assert (root / "d/kept").exists()
    assert os.listxattr(root / "d") == ["user.new"]  # old xattrs cleared, like umoci


@pytest.mark.root
def test_symlinked_parents_resolve_inside_the_tree(tmp_path: Path) -> None:
    lower = (
        Layer()
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .symlink("lib64", "/usr/lib")
        .symlink("up", "../../..")
        .bytes()
    )
    upper = Layer().file("lib/a.so").file("lib64/b.so").file("up/usr/lib/c.so").bytes()
    root = unpack(tmp_path, lower, upper)
    assert sorted(os.listdir(root / "usr/lib")) == ["a.so", "b.so", "c.so"]
    assert os.path.islink(root / "lib") and os.path.islink(root / "lib64")


@pytest.mark.root
def test_lower_directory_times_survive_new_children(tmp_path: Path) -> None:
    lower = Layer().dir("etc", mtime=1234).file("etc/a").bytes()
    upper = Layer().file("etc/b").file("etc/.wh.a").bytes()
    root = unpack(tmp_path, lower, upper)
    assert os.listdir(root / "etc") == ["b"]
    assert lst(root / "etc").st_mtime_ns == 1234 * 10**9


@pytest.mark.root
def test_missing_parents_are_created(tmp_path: Path) -> None:
    root = unpack(tmp_path, Layer().file("a/b/c/f", b"x").bytes())
    assert (root / "a/b/c/f").read_bytes() == b"x"
    assert stat.S_IMODE(lst(root / "a/b").st_mode) == 0o755


@pytest.mark.root
def test_names_are_normalized(tmp_path: Path) -> None:
    layer = Layer().file("/abs", b"1").file("./dot", b"2").file("x/../y", b"3").bytes()
    root = unpack(tmp_path, layer)
    assert sorted(os.listdir(root)) == ["abs", "dot", "y"]  # lexical, as umoci and containerd


@pytest.mark.root
def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    root = unpack(tmp_path, Layer().file(name, b"x").bytes())
    assert os.listdir(os.fsencode(root)) == [b"caf\xe9"]


@pytest.mark.root
def test_gnu_sparse_files(tmp_path: Path) -> None:
    need("tar")
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"data")
        f.seek(3 << 20)
        f.write(b"tail")
    for fmt in ("gnu", "posix"):
        blob = tmp_path / f"{fmt}.tar"
        subprocess.run(
            ["tar", f"--format={fmt}", "--sparse", "-cf", str(blob), "-C", str(src), "sparse"],
            check=True,
        )
        dest = tmp_path / f"out-{fmt}"
        unpack_layers([(blob, TAR)], dest)
        assert (dest / "sparse").read_bytes() == (src / "sparse").read_bytes()


# --- compression ------------------------------------------------------------------------


@pytest.mark.root
def test_gzip_variants(tmp_path: Path) -> None:
    a = Layer().file("a", b"a" * 100_000).bytes()
    b = Layer().file("b", b"b").bytes()
    plain = unpack(tmp_path / "1", gzip.compress(a), media_type=GZIP)
    assert (plain / "a").read_bytes() == b"a" * 100_000
    # two gzip members making one tar; zero padding after the last member
    tar = a[:-1024]  # without its end-of-archive blocks...
    multi = gzip.compress(tar[:5000]) + gzip.compress(tar[5000:] + b"\0" * 1024) + b"\0" * 512
    root = unpack(tmp_path / "2", multi, media_type=GZIP)
    assert (root / "a").read_bytes() == b"a" * 100_000
    # a '+gzip' (or docker) layer that is really a plain tar: sniffed, as containerd does
    assert (unpack(tmp_path / "3", b, media_type=DOCKER) / "b").exists()


@pytest.mark.root
@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (gzip.compress(b"x" * 2048)[:-20], "truncated"),
        (gzip.compress(Layer().file("a").bytes()) + b"junk", "gzip"),
        (b"\x1f\x8b\x08\x00garbage" * 10, "gzip"),
        (b"not a tar at all" * 100, "tar"),
    ],
    ids=["truncated", "trailing-garbage", "corrupt", "not-tar"],
)
def test_bad_blobs(tmp_path: Path, blob: bytes, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        unpack(tmp_path, blob, media_type=GZIP)
    assert not (tmp_path / "rootfs").exists()


def test_zstd_needs_a_decompressor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    monkeypatch.setitem(sys.modules, "compression", None)
    blob = b"\x28\xb5\x2f\xfd" + b"\0" * 100
    with pytest.raises(ImageError, match="zstd") as err:
        unpack(tmp_path, blob, media_type=ZSTD)
    assert "zstandard" in err.value.hint


@pytest.mark.root
def test_zstd_through_the_zstandard_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in module with zstandard's streaming API: frames are magic + raw bytes."""

    class Reader:
        def __init__(self, src: object, read_across_frames: bool) -> None:
            assert read_across_frames
            self.data = b""
            while chunk := src.read(1 << 20):  # type: ignore[attr-defined]
                self.data += chunk
            assert self.data[:4] == b"\x28\xb5\x2f\xfd"
            self.data = self.data[4:]

        def read(self, n: int) -> bytes:
            out, self.data = self.data[:n], self.data[n:]
            return out

    fake = types.ModuleType("zstandard")
    fake.ZstdDecompressor = lambda: types.SimpleNamespace(stream_reader=Reader)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zstandard", fake)
    blob = b"\x28\xb5\x2f\xfd" + Layer().file("z", b"zz").bytes()
    assert (unpack(tmp_path, blob, media_type=ZSTD) / "z").read_bytes() == b"zz"


@pytest.mark.root
def test_tree_is_private_while_unpacking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setuid files and devices are not reachable by other users before the end."""
    dest = tmp_path / "rootfs"
    modes = []

    class Reader:
        def __init__(self, src: object, read_across_frames: bool) -> None:
            self.src = src
            self.first = True

        def read(self, n: int) -> bytes:
            modes.append(stat.S_IMODE(os.stat(dest).st_mode))
            if self.first:  # the frame magic
                self.first = False
                assert self.src.read(4) == b"\x28\xb5\x2f\xfd"  # type: ignore[attr-defined]
            data: bytes = self.src.read(n)  # type: ignore[attr-defined]
            return data

    fake = types.ModuleType("zstandard")
    fake.ZstdDecompressor = lambda: types.SimpleNamespace(stream_reader=Reader)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zstandard", fake)
    blob = b"\x28\xb5\x2f\xfd" + Layer().dir("./", mode=0o755).file("su", mode=0o4755).bytes()
    unpack(tmp_path, blob, media_type=ZSTD)
    assert modes and set(modes) == {0o700}
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o755


def test_unknown_media_type(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="media type"):
        unpack(tmp_path, Layer().bytes(), media_type="application/x-rar")


# --- target and limits ------------------------------------------------------------------


def test_dest_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs/something").write_text("x")
    with pytest.raises(ImageError, match="already exists"):
        unpack(tmp_path, Layer().file("f").bytes())
    shutil.rmtree(tmp_path / "rootfs")
    (tmp_path / "rootfs").symlink_to("/")
    with pytest.raises(ImageError, match="already exists"):
        unpack(tmp_path, Layer().file("f").bytes())


@pytest.mark.root
def test_a_failed_layer_removes_the_partial_tree(tmp_path: Path) -> None:
    good = Layer().file("usr/bin/su", mode=0o4755).symlink("x", "/").bytes()
    bad = Layer().file("../escape").bytes()
    with pytest.raises(ImageError, match="layer 2/2"):
        unpack(tmp_path, good, bad)
    assert not os.path.lexists(tmp_path / "rootfs")
    assert os.path.exists("/")  # the symlink to / was removed, not followed


@pytest.mark.root
def test_entry_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpack_mod, "MAX_ENTRIES", 5)
    layer = Layer()
    for i in range(10):
        layer.file(f"f{i}")
    with pytest.raises(ImageError, match="more than 5 entries"):
        unpack(tmp_path, layer.bytes())


def test_space_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fstatvfs

    def small(fd: int) -> os.statvfs_result:
        st = real(fd)
        fields = list(st)
        fields[4] = 64  # f_bavail: 256 KiB of 4 KiB blocks
        fields[1] = 4096  # f_frsize
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "fstatvfs", small)
    with pytest.raises(ImageError, match="does not fit"):
        unpack(tmp_path, Layer().file("big", b"\0" * (1 << 20)).bytes())


# --- unpack_image: digests --------------------------------------------------------------


@pytest.mark.root
def test_unpack_image(tmp_path: Path) -> None:
    layout, digest = oci_layout(
        tmp_path, [Layer().file("a", b"1").file("b").bytes(), Layer().file(".wh.b").bytes()]
    )
    unpack_image(layout, digest, tmp_path / "root")
    assert os.listdir(tmp_path / "root") == ["a"]


@pytest.mark.root
def test_layer_blob_must_match_its_digest(tmp_path: Path) -> None:
    layout, digest = oci_layout(tmp_path, [Layer().file("a", b"payload-1").bytes()], gz=False)
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    blob.write_bytes(blob.read_bytes().replace(b"payload-1", b"payload-2"))  # same size
    with pytest.raises(ImageError, match="does not match its digest"):
        unpack_image(layout, digest, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_layer_size_must_match(tmp_path: Path) -> None:
    layout, digest = oci_layout(tmp_path, [Layer().file("a").bytes()])
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_bytes())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    with open(blob, "ab") as f:
        f.write(b"\0" * 10)
    with pytest.raises(ImageError, match="descriptor says"):
        unpack_image(layout, digest, tmp_path / "root")


@pytest.mark.root
def test_diff_id_must_match(tmp_path: Path) -> None:
    layout, digest = oci_layout(
        tmp_path, [Layer().file("a").bytes()], diff_ids=["sha256:" + "0" * 64]
    )
    with pytest.raises(ImageError, match="diff_id"):
        unpack_image(layout, digest, tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_diff_id_count_must_match(tmp_path: Path) -> None:
    layout, digest = oci_layout(tmp_path, [Layer().file("a").bytes()], diff_ids=[])
    with pytest.raises(ImageError, match=r"1 layers.*0 diff_ids"):
        unpack_image(layout, digest, tmp_path / "root")


@pytest.mark.parametrize(
    "bad",
    ["sha256:../../../../etc/passwd", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "", "x"],
)
def test_digests_are_validated_before_use(tmp_path: Path, bad: str) -> None:
    layout, _ = oci_layout(tmp_path, [Layer().file("a").bytes()])
    with pytest.raises(ImageError, match="invalid digest"):
        unpack_image(layout, bad, tmp_path / "root")
    layout2, digest2 = oci_layout(
        tmp_path / "2", [Layer().file("a").bytes()], diff_ids=[bad or "sha256:"]
    )
    with pytest.raises(ImageError, match="invalid digest"):
        unpack_image(layout2, digest2, tmp_path / "root")


def test_manifest_must_be_a_manifest(tmp_path: Path) -> None:
    layout, digest = oci_layout(
        tmp_path, [Layer().file("a").bytes()], manifest_extra={"manifests": []}
    )
    with pytest.raises(ImageError, match="index"):
        unpack_image(layout, digest, tmp_path / "root")


def test_missing_blob_and_missing_layout(tmp_path: Path) -> None:
    layout, digest = oci_layout(tmp_path, [Layer().file("a").bytes()])
    with pytest.raises(ImageError, match="not in"):
        unpack_image(layout, "sha256:" + "1" * 64, tmp_path / "root")
    with pytest.raises(ImageError, match="not an OCI layout"):
        unpack_image(tmp_path / "nowhere", digest, tmp_path / "root")


def test_tar_stream_reads_across_chunks() -> None:
    stream = streams.TarStream(iter([b"abc", b"", b"defgh", b"ij"]))
    assert stream.read(2) == b"ab"
    assert stream.read(4) == b"cdef"
    assert stream.tell() == 6
    assert stream.read(10) == b"ghij"
    assert stream.read(1) == b""


def test_inflater_hands_errors_to_the_reader() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x"
        raise ImageError("boom")

    inflater = streams.Inflater(chunks())
    it = iter(inflater)
    assert next(it) == b"x"
    with pytest.raises(ImageError, match="boom"):
        next(it)
    inflater.close()


def test_inflater_stops_when_the_reader_gives_up() -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 1024

    inflater = streams.Inflater(endless())
    assert next(iter(inflater)) == b"x" * 1024
    inflater.close()  # must not hang on the full queue
    assert not inflater._thread.is_alive()


@pytest.mark.root
def test_mtimes_use_pax_precision(tmp_path: Path) -> None:
    layer = Layer().file("f", pax={"mtime": "1700000000.123456789"}).bytes()
    root = unpack(tmp_path, layer)
    assert lst(root / "f").st_mtime_ns == 1700000000123456789
    assert MTIME  # the default in Layer


@pytest.mark.root
def test_a_fresh_filesystem_mountpoint_is_filled_in_place(tmp_path: Path) -> None:
    """Snapshots are unpacked into a newly made, mounted filesystem: empty but for an
    empty lost+found, which stays; anything else there is refused."""
    dest = tmp_path / "rootfs"
    (dest / "lost+found").mkdir(parents=True)
    unpack_layers([(_blob(tmp_path, Layer().file("etc/x", b"1").bytes()), TAR)], dest)
    assert (dest / "etc/x").read_bytes() == b"1" and (dest / "lost+found").is_dir()
    assert stat.S_IMODE(lst(dest).st_mode) == 0o755

    busy = tmp_path / "busy"
    (busy / "lost+found").mkdir(parents=True)
    (busy / "lost+found/orphan").write_text("x")
    with pytest.raises(ImageError, match="already exists"):
        unpack_layers([(_blob(tmp_path, Layer().file("y").bytes()), TAR)], busy)
    assert (busy / "lost+found/orphan").exists()

    failing = tmp_path / "failing"
    (failing / "lost+found").mkdir(parents=True)
    bad = Layer().file("ok").hardlink("h", "missing").bytes()
    with pytest.raises(ImageError):
        unpack_layers([(_blob(tmp_path, bad), TAR)], failing)
    assert sorted(os.listdir(failing)) == ["lost+found"]  # emptied, the mountpoint kept


def _blob(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / f"blob-{len(list(tmp_path.glob('blob-*')))}"
    p.write_bytes(data)
    return p
