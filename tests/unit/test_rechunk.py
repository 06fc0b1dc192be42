"""cos rechunk without root: grouping by package, packing into layers, byte-stable layers."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from cos.errors import ImageError
from cos.oci import chunks
from cos.oci.layout import OciLayout
from cos.oci.rechunk import PACKAGES, created_ns, grouping, platform_manifest, rechunk_tree
from cos.oci.tarwriter import Mtimes, differences, fingerprint
from cos.oci.unpack import unpack_image
from tests.support.debianish import MTIME, make_tree

CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "created": "2024-01-02T03:04:05Z",
    "config": {"Entrypoint": ["/bin/sh"], "Env": ["A=1"], "Labels": {"x": "y"}},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
    "history": [{"created_by": "FROM scratch"}],
}


def _files(root: Path) -> list[chunks.File]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(Path(dirpath) / d)]:
            full = Path(dirpath) / name
            st = os.lstat(full)
            inode = (st.st_dev, st.st_ino) if st.st_nlink > 1 else None
            out.append(chunks.File(str(full.relative_to(root)), st.st_size, inode))
    return out


# --- who owns what ------------------------------------------------------------------


def test_dpkg_owners_follow_merged_usr_and_first_owner_wins(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    owners = chunks.dpkg_owners(root)
    assert owners is not None
    assert owners["usr/lib/x86_64-linux-gnu/libc.so.6"] == "libc6:amd64"  # listed as /lib/…
    assert owners["usr/bin/cat"] == "coreutils"  # also in tiny.list: the first by name wins
    assert owners["var/lib/dpkg/info/less.md5sums"] == "less"  # dpkg's records travel along
    assert "var/lib/dpkg/status" not in owners
    assert "removed" not in set(owners.values())  # not installed


def test_symlinks_resolve_inside_the_root_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    (root / "usr/bin/escape").mkdir()
    os.symlink("/etc", root / "hostetc")  # absolute: the image's /etc, never the host's
    info = root / "var/lib/dpkg/info/less.list"
    info.write_text(info.read_text() + "/hostetc/hostname\n/../../../etc/issue\n")
    owners = chunks.dpkg_owners(root)
    assert owners is not None
    assert owners["etc/hostname"] == "less"
    assert not any(p.startswith(("/", "..")) for p in owners)


def test_no_dpkg_data_groups_by_path(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", dpkg=False)
    assert chunks.dpkg_owners(root) is None
    groups = chunks.group_files(_files(root), None)
    assert set(groups) == {"path:/", "path:/usr/lib/cos", "path:/boot", "path:/etc", "path:/var"}
    assert "usr/lib/cos/cos" in groups["path:/usr/lib/cos"].paths


def test_hard_links_share_the_owners_group(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    groups = chunks.group_files(_files(root), chunks.dpkg_owners(root))
    # usr/bin/dir sorts before usr/bin/ls and no package lists it: the owned name decides
    assert {"usr/bin/dir", "usr/bin/ls"} <= set(groups["coreutils"].paths)
    info = root / "var/lib/dpkg/info"
    extra = (info / "coreutils.list").stat().st_size + (info / "coreutils.md5sums").stat().st_size
    assert groups["coreutils"].size == 5 * 512 + 10000 + 9000 + extra  # the inode counted once


# --- packing ------------------------------------------------------------------------


SIZES = {f"pkg{i:02d}": int(1e6 * 0.85**i) for i in range(40)} | {  # a few large, many small
    "path:/": 500,
    "path:/etc": 7000,
    chunks.DIRS: 300,
}


def test_pack_keeps_within_budget_largest_alone_dirs_last() -> None:
    for n in (1, 2, 3, 10, 41, 43, 100):
        layers = chunks.plan(SIZES, n)
        assert 1 <= len(layers) <= n
        assert sorted(g for x in layers for g in x) == sorted(SIZES)  # each group once
        if n > 1:
            assert layers[-1] == [chunks.DIRS]
    layers = chunks.plan(SIZES, 10)
    weights = [sum(SIZES[g] for g in x) for x in layers if not chunks._volatile(x)]
    assert weights == sorted(weights, reverse=True)  # the largest first
    assert ["pkg00"] in layers and ["pkg01"] in layers  # the largest groups alone
    assert any(chunks.is_path_group(g) for g in layers[-2])  # path groups after packages
    assert chunks.plan(SIZES, 10) == layers  # a pure function
    assert len(chunks.plan(SIZES, 100)) == len(SIZES)


def test_small_groups_share_balanced_layers() -> None:
    layers = chunks.plan(SIZES, 10)
    weight = [sum(SIZES[g] for g in x) for x in layers[:-1]]
    shared = [w for x, w in zip(layers, weight, strict=False) if len(x) > 1]
    even = sum(SIZES.values()) / 9
    assert shared and max(shared) <= 1.5 * even


def test_prev_keeps_the_grouping_of_unchanged_groups() -> None:
    first = chunks.plan(SIZES, 10)
    # an update: one package grows, one is dropped, one is new
    sizes = dict(SIZES) | {"pkg05": 500_000, "pkg39": 3000, "pkg99": 3000}
    del sizes["pkg30"]
    again = chunks.plan(sizes, 10, prev=first)
    assert len(again) <= 10
    before = {tuple(x) for x in first}
    after = {tuple(x) for x in again}
    changed = after - before
    # only the layer that lost pkg30 and the one that took the newcomer differ
    assert len(changed) <= 2 and any("pkg99" in x for x in changed), changed
    assert chunks.plan(sizes, 10, prev=again) == again
    big = sizes | {"pkg98": 2_000_000}  # a large newcomer gets a layer of its own
    assert ["pkg98"] in chunks.plan(big, 10, prev=again)


def test_prev_with_fewer_layers_merges_the_smallest() -> None:
    first = chunks.plan(SIZES, 20)
    fewer = chunks.plan(SIZES, 8, prev=first)
    assert len(fewer) <= 8
    assert sorted(g for x in fewer for g in x) == sorted(SIZES)


# --- deterministic layers -----------------------------------------------------------


def _layer_digests(out: Path) -> tuple[str, list[str]]:
    index = json.loads((out / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((out / "blobs/sha256" / digest[7:]).read_text())
    return digest, [x["digest"] for x in manifest["layers"]]


def test_same_files_same_bytes_twice_elsewhere_and_shuffled(tmp_path: Path) -> None:
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "elsewhere/b", shuffle=7)  # created in another order
    r1 = rechunk_tree(a, CONFIG, tmp_path / "o1", "x", 8)
    r2 = rechunk_tree(a, CONFIG, tmp_path / "o2", "x", 8)
    r3 = rechunk_tree(b, CONFIG, tmp_path / "o3", "x", 8)
    assert r1 == r2 == r3
    assert _layer_digests(tmp_path / "o1") == _layer_digests(tmp_path / "o3")
    assert r1.packages == 5


def test_layers_are_canonical(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    r = rechunk_tree(root, CONFIG, tmp_path / "o", "x", 64)
    seen: list[str] = []
    for layer in r.layers:
        blob = (tmp_path / "o/blobs/sha256" / layer.digest[7:]).read_bytes()
        assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # no name, mtime 0
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
            members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names, key=os.fsencode)
        for m in members:
            assert (m.uname, m.gname) == ("", "")
            assert not {"atime", "ctime", "uname", "gname"} & set(m.pax_headers)
        seen += names
        if layer.groups == (chunks.DIRS,):
            assert all(m.isdir() for m in members) and names[0] == "."
    assert len(seen) == len(set(seen))  # every path in exactly one layer
    by_name = {}
    for layer in r.layers:
        blob = (tmp_path / "o/blobs/sha256" / layer.digest[7:]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
            by_name |= {m.name: m for m in tf.getmembers()}
    assert by_name["usr/bin/ls"].islnk() and by_name["usr/bin/ls"].linkname == "usr/bin/dir"
    assert by_name["usr/bin/pager"].issym()
    assert by_name["usr/bin/cat"].pax_headers["mtime"] == "1700000000.123456789"


def test_round_trip_unpacks_to_the_same_tree(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    r = rechunk_tree(root, CONFIG, tmp_path / "o", "x", 4)
    assert len(r.layers) == 4
    unpack_image(tmp_path / "o", r.digest, tmp_path / "back")
    assert differences(fingerprint(root), fingerprint(tmp_path / "back")) == []
    (tmp_path / "back/etc/issue").write_text("changed\n")
    os.utime(tmp_path / "back/usr/bin/cat", ns=(0, 0))
    assert differences(fingerprint(root), fingerprint(tmp_path / "back")) == [
        "/etc/issue: size, content, mtime",
        "/usr/bin/cat: mtime",
    ]


def test_config_carried_over_with_history_and_annotations(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    r = rechunk_tree(root, CONFIG, tmp_path / "o", "x", 6, annotations={"a": "b"})
    layout = OciLayout(tmp_path / "o")
    manifest = layout.read_json(r.digest, "manifest")
    config = layout.read_json(manifest["config"]["digest"], "config")
    assert config["config"] == CONFIG["config"] and config["created"] == CONFIG["created"]
    assert config["rootfs"]["diff_ids"] == [x.diff_id for x in r.layers]
    assert config["history"][0] == {"created_by": "FROM scratch", "empty_layer": True}
    assert [h.get("empty_layer", False) for h in config["history"]].count(False) == 6
    assert manifest["annotations"] == {"a": "b"}
    got = grouping(manifest, "x")
    assert [list(x.groups) for x in r.layers[:-1]] == got[:-1] and got[-1] == []
    assert all(PACKAGES in x["annotations"] for x in manifest["layers"])
    assert platform_manifest(layout, r.digest, "arm64", "x") == r.digest


def test_source_date_epoch_clamps_later_mtimes_only(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    epoch = MTIME // 1_000_000_000 - 10
    os.utime(root / "etc/issue", ns=(0, 5_000_000_000))  # older: kept
    r = rechunk_tree(root, CONFIG, tmp_path / "o", "x", 64, times=Mtimes(clamp=epoch))
    unpack_image(tmp_path / "o", r.digest, tmp_path / "back")
    assert (tmp_path / "back/etc/issue").stat().st_mtime_ns == 5_000_000_000
    assert (tmp_path / "back/usr/bin/cat").stat().st_mtime_ns == epoch * 1_000_000_000
    assert differences(fingerprint(root, Mtimes(epoch)), fingerprint(tmp_path / "back")) == []
    layout = OciLayout(tmp_path / "o")
    manifest = layout.read_json(r.digest, "manifest")
    config = layout.read_json(manifest["config"]["digest"], "config")
    assert config["created"] == "2023-11-14T22:13:10Z"


def test_prev_without_annotations_is_refused() -> None:
    with pytest.raises(ImageError, match=r"layer 1 has no org\.cos\.rechunk\.packages"):
        grouping({"layers": [{"digest": "sha256:" + "1" * 64}]}, "--prev x")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    import socket

    root = make_tree(tmp_path / "t")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "run-socket"))
        with pytest.raises(ImageError, match="is a socket"):
            rechunk_tree(root, CONFIG, tmp_path / "o", "x", 8)


def test_directories_the_unpacker_stamped_get_the_creation_time(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t")
    late = MTIME + 10**12
    os.utime(root, ns=(late, late))  # as if no layer had an entry for the root
    times = Mtimes(unpacked_at=late, stand_in=created_ns(CONFIG))
    r = rechunk_tree(root, CONFIG, tmp_path / "o", "x", 64, times=times)
    unpack_image(tmp_path / "o", r.digest, tmp_path / "back")
    assert (tmp_path / "back").stat().st_mtime_ns == 1_704_164_645 * 10**9  # 2024-01-02T03:04:05Z
    assert (tmp_path / "back/usr").stat().st_mtime_ns == MTIME  # stamped by the image: kept
    assert differences(fingerprint(root, times), fingerprint(tmp_path / "back")) == []


def test_path_groups_alone_and_room_left_for_newcomers() -> None:
    sizes = SIZES | {"path:/var/lib/dpkg": 9000, "path:/etc/ld.so.cache": 100}
    first = chunks.plan(sizes, 64)
    paths = [x for x in first if any(chunks.is_path_group(g) for g in x)]
    assert paths[-1] == [chunks.DIRS] and first[-len(paths) :] == paths  # after packages
    assert sorted(paths) == sorted(
        [["path:/"], ["path:/etc"], ["path:/etc/ld.so.cache"], ["path:/var/lib/dpkg"], ["dirs:"]]
    )
    # a small package added: a layer of its own; every other layer stays as it was
    again = chunks.plan(sizes | {"pkg99": 3000}, 64, prev=first)
    assert ["pkg99"] in again and {tuple(x) for x in first} <= {tuple(x) for x in again}
    # few layers: path groups share as before
    assert len(chunks.plan(sizes, 10)) <= 10


def test_bytecode_and_module_indexes_go_with_their_package() -> None:
    owners = {
        "usr/lib/python3/dist-packages/yaml/nodes.py": "python3-yaml",
        "usr/lib/python3/dist-packages/yaml/__pycache__": "python3-yaml",
        "usr/lib/modules/6.1.0-9-amd64/modules.order": "linux-image-6.1.0-9-amd64",
        "usr/lib/modules/6.1.0-9-amd64/kernel": "linux-image-6.1.0-9-amd64",
        "usr/lib/x86_64-linux-gnu/libz.so.1": "zlib1g",
        "usr/lib/x86_64-linux-gnu/libc.so.6": "libc6",
        "etc/passwd.d/a": "base-passwd",
    }
    files = [
        chunks.File("usr/lib/python3/dist-packages/yaml/__pycache__/nodes.cpython-311.pyc", 10),
        chunks.File("usr/lib/python3/dist-packages/yaml/__pycache__/gone.cpython-311.pyc", 10),
        chunks.File("usr/lib/modules/6.1.0-9-amd64/modules.dep", 10),
        chunks.File("usr/lib/x86_64-linux-gnu/ld.cache", 10),
        chunks.File("etc/passwd.d/b", 10),
    ]
    groups = {g.name: g.paths for g in chunks.group_files(files, owners).values()}
    assert groups["python3-yaml"] == [files[0].path]
    assert groups["linux-image-6.1.0-9-amd64"] == [files[2].path]
    # a source that is gone, a directory of two packages, /etc: path groups
    assert groups["path:/"] == sorted([files[1].path, files[3].path])
    assert groups["path:/etc"] == [files[4].path]
