"""cos rechunk on real layouts: whiteouts, platforms, refusals, the vanilla image, and an
update between two rechunked releases that pulls only the changed packages' layers."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from cos.oci.tarwriter import differences, fingerprint
from tests.integration.test_pull import _index
from tests.integration.test_signatures import cos, refused, tiny_layout
from tests.support import events
from tests.support.cli import push
from tests.support.debianish import PACKAGES, VERSIONS, make_tree
from tests.support.images import BUILD
from tests.support.registry import served_blobs

pytestmark = pytest.mark.integration
PACKAGES_NOTE = "org.cos.rechunk.packages"


@pytest.fixture
def private_cache(tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _manifest(layout: Path, tag: str) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    (digest,) = [
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    return dict(json.loads((layout / "blobs/sha256" / digest[7:]).read_text()))


def _layers(layout: Path, tag: str) -> dict[str, tuple[str, int]]:
    """Layer digest → (its groups, size)."""
    layers = _manifest(layout, tag)["layers"]
    assert isinstance(layers, list)
    return {x["digest"]: (x["annotations"][PACKAGES_NOTE], x["size"]) for x in layers}


def _add_layer(layout: Path, tag: str, tar: Path, new_tag: str | None = None) -> None:
    argv = ["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(tar)]
    subprocess.run(argv + (["--tag", new_tag] if new_tag else []), check=True)


def test_debian_like_image_with_whiteouts(tmp_path: Path, private_cache: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    layout = tmp_path / "oci"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:src"], check=True)
    base = tmp_path / "base.tar"
    with tarfile.open(base, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(os.listdir(tree)):
            tf.add(tree / name, arcname=name)
    _add_layer(layout, "src", base)
    # an upper layer hides a file, makes a directory opaque and adds one
    upper = tmp_path / "upper.tar"
    with tarfile.open(upper, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (
            ("opt/thing/.wh.data", b""),
            ("usr/share/tiny/.wh..wh..opq", b""),
            ("usr/share/tiny/b", b"b\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tf.addfile(info, io.BytesIO(data))
    _add_layer(layout, "src", upper)

    cos("rechunk", f"oci:{layout}:src", f"oci:{layout}:out")
    layers = _layers(layout, "out")
    groups = [g for g, _ in layers.values()]
    assert groups[-1] == "dirs:"
    for pkg in PACKAGES:
        assert sum(pkg in g.split(",") for g in groups) == 1
    cos("pull-image", f"oci:{layout}:src", str(tmp_path / "a"))
    cos("pull-image", f"oci:{layout}:out", str(tmp_path / "b"))
    assert not (tmp_path / "b/opt/thing/data").exists()
    assert sorted(os.listdir(tmp_path / "b/usr/share/tiny")) == ["b"]
    # the source has no entry for the root: its time is that of each unpack
    assert differences(fingerprint(tmp_path / "a"), fingerprint(tmp_path / "b")) == ["/: mtime"]
    # the same input twice: the same image
    cos("rechunk", f"oci:{layout}:src", f"oci:{layout}:again")
    assert _manifest(layout, "again") == _manifest(layout, "out")


def test_platforms_paths_only_and_refusals(tmp_path: Path, private_cache: Path) -> None:
    layout = tmp_path / "oci"
    tiny_layout(layout, "amd", {"etc/arch": "amd64", "usr/lib/cos/x": "t", "srv/a": "a"})
    tiny_layout(layout, "arm", {"etc/arch": "arm64", "usr/lib/cos/x": "t", "srv/a": "a"})
    _index(layout, "multi", {"amd64": "amd", "arm64": "arm"})
    out = tmp_path / "out"
    cos(
        "rechunk",
        "--platform",
        "linux/arm64",
        "--max-layers",
        "2",
        f"oci:{layout}:multi",
        f"oci:{out}:x",
    )
    cos("pull-image", f"oci:{out}:x", str(tmp_path / "t"))
    assert (tmp_path / "t/etc/arch").read_text() == "arm64"
    groups = [g for g, _ in _layers(out, "x").values()]
    assert groups == ["path:/,path:/etc,path:/usr/lib/cos", "dirs:"]  # no dpkg: by path

    r = cos(
        "rechunk", "--platform", "linux/s390x", f"oci:{layout}:multi", f"oci:{out}:y", check=False
    )
    refused(r, 4, "no linux/s390x variant")
    refused(
        cos("rechunk", "--max-layers", "0", f"oci:{layout}:amd", f"oci:{out}:y", check=False),
        2,
        "at least 1",
    )
    refused(cos("rechunk", f"oci:{layout}:amd", f"dir:{tmp_path}/d", check=False), 2, "a tree")
    r = cos(
        "rechunk", "--prev", f"oci:{layout}:amd", f"oci:{layout}:amd", f"oci:{out}:y", check=False
    )
    refused(r, 4, "not made by cos rechunk")
    tags = [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in json.loads((out / "index.json").read_text())["manifests"]
    ]
    assert tags == ["x"]  # nothing written by the refused runs


def _upgraded(tree: Path, pkg: str, files: dict[str, bytes]) -> None:
    """What an upgrade of pkg does to a tree: its files, md5sums and status entry."""
    mtime = 1_750_000_000_000_000_000
    for path, data in files.items():
        full = tree / path.lstrip("/")
        full.write_bytes(data)  # in place: the directory's mtime stays
        os.utime(full, ns=(mtime, mtime))
    info = tree / "var/lib/dpkg/info" / f"{pkg}.md5sums"
    info.write_text(info.read_text() + "upgraded\n")
    os.utime(info, ns=(mtime, mtime))
    status = tree / "var/lib/dpkg/status"
    stamp = os.stat(status).st_mtime_ns
    paras = status.read_text().split("\n\n")
    paras = [
        p.replace("\nVersion: ", "\nVersion: 9:", 1) if p.startswith(f"Package: {pkg}\n") else p
        for p in paras
    ]
    status.write_text("\n\n".join(paras))
    os.utime(status, ns=(stamp, stamp + 1))


def _pulled(ref: str, dest: Path) -> dict[str, int]:
    r = cos("pull-image", "--json", "--tls-verify=false", ref, str(dest))
    return events.check_pulled(events.parse(r.stdout))


def _changed(layout: Path, old: str, new: str) -> dict[str, tuple[str, int]]:
    before, after = _layers(layout, old), _layers(layout, new)
    assert len(after) == len(before)
    return {d: x for d, x in after.items() if d not in before}


def test_update_changes_only_the_package_layer(
    tmp_path: Path, private_cache: Path, local_registry: str, registry_dir: Path
) -> None:
    v1 = make_tree(tmp_path / "v1")
    v2 = make_tree(tmp_path / "v2", versions=VERSIONS | {"less": "2.0"}, shuffle=3)
    _upgraded(v2, "less", {"/usr/bin/less": b"less v2\n" * 120})
    out = tmp_path / "oci"
    cos("rechunk", f"dir:{v1}", f"oci:{out}:v1")
    cos("rechunk", "--prev", f"oci:{out}:v1", f"dir:{v2}", f"oci:{out}:v2")
    changed = _changed(out, "v1", "v2")
    assert sorted(g for g, _ in changed.values()) == ["less", "path:/var/lib/dpkg"]

    # a device that holds v1 pulls just those two layers (and the config)
    ref = f"{local_registry}/rechunk/small"
    push(out, "v1", f"{ref}:v1")
    push(out, "v2", f"{ref}:v2")
    _pulled(f"{ref}:v1", tmp_path / "p1")
    log = registry_dir / "registry.log"
    offset = log.stat().st_size
    got = _pulled(f"{ref}:v2", tmp_path / "p2")
    config = _manifest(out, "v2")["config"]
    assert isinstance(config, dict)
    assert got == {d: s for d, (_, s) in changed.items()} | {config["digest"]: config["size"]}
    # what the registry served, from its access log: the same blobs, the same bytes
    assert served_blobs(log, "rechunk/small", offset) == got


@pytest.mark.extended  # rechunks the 300 MiB vanilla image twice (~3 min)
def test_vanilla_rechunked_and_updated(
    tmp_path: Path, private_cache: Path, local_registry: str, vanilla: str, registry_dir: Path
) -> None:
    src = f"oci:{BUILD / 'oci'}:vanilla"
    out = tmp_path / "oci"
    cos("rechunk", src, f"oci:{out}:v1")  # the command checks the trees are equal itself
    layers = _layers(out, "v1")
    assert len(layers) <= 64
    groups = [g.split(",") for g, _ in layers.values()]
    kernel = next(g for g in groups if any(x.startswith("linux-image-") for x in g))
    assert len(kernel) == 1  # the largest package: a layer of its own

    # an update of one package, made to the flattened tree as dpkg would
    tree = tmp_path / "tree"
    cos("pull-image", src, str(tree))
    less = tree / "usr/bin/less"
    _upgraded(tree, "less", {"/usr/bin/less": less.read_bytes() + b"\0patched"})
    cos("rechunk", "--prev", f"oci:{out}:v1", f"dir:{tree}", f"oci:{out}:v2")
    changed = _changed(out, "v1", "v2")
    names = [g.split(",") for g, _ in changed.values()]
    assert len(changed) == 2 and any("less" in g for g in names), names
    assert any("path:/var/lib/dpkg" in g for g in names), names
    total = sum(s for _, s in layers.values())
    moved = sum(s for _, s in changed.values())
    assert moved < total / 20, (moved, total)

    ref = f"{local_registry}/rechunk/vanilla"
    push(out, "v1", f"{ref}:v1")
    push(out, "v2", f"{ref}:v2")
    _pulled(f"{ref}:v1", tmp_path / "p1")
    log = registry_dir / "registry.log"
    offset = log.stat().st_size
    got = _pulled(f"{ref}:v2", tmp_path / "p2")
    assert set(got) - set(changed) == {_manifest(out, "v2")["config"]["digest"]}  # type: ignore[index]
    assert served_blobs(log, "rechunk/vanilla", offset) == got  # the registry's own count
    print(
        f"vanilla: {len(layers)} layers, {total >> 20} MiB; update pulled {sum(got.values())} bytes"
    )
