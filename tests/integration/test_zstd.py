"""zstd layers as skopeo/buildah push them: pulled, verified and unpacked like gzip ones.

The same two-layer image is pushed three times, its layers compressed with zstd,
zstd:chunked (zstd frames plus skippable frames holding a table of contents) and gzip;
`cos pull-image` of each must give the same tree. Each goes to a registry of its own:
skopeo's blob-info cache would otherwise hand the registry a blob it already holds for
the same content in another compression.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.cli import cos, push_manifest
from tests.support.malicious_layers import Layer, oci_layout
from tests.support.registry import registry
from tests.support.trees import differences, tree

pytestmark = pytest.mark.integration

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _unpadded(tar: bytes) -> bytes:
    """The tar up to its end-of-archive blocks, as Go's archive/tar (buildah) writes it.

    Python pads to 10 KiB records; skopeo's zstd:chunked writer drops that padding but
    keeps the config's diff_id of the padded tar, an image no unpacker that checks
    diff_ids (containerd, cos) accepts.
    """
    end = len(tar.rstrip(b"\0"))
    return tar[: -(-end // 512) * 512 + 1024]


def _layers() -> list[bytes]:
    marker = os.urandom(16).hex().encode()
    base = (
        Layer()
        .dir("./")
        .dir("etc")
        .file("etc/marker", marker)
        .file("etc/big", os.urandom(1 << 20) + b"z" * (3 << 20), mode=0o600, uid=12, gid=34)
        .symlink("etc/link", "big")
        .hardlink("etc/again", "etc/big")
        .dir("var")
        .dir("var/lib")
        .dir("var/lib/app", mode=0o750)
        .file("var/lib/app/gone", b"removed by the next layer")
        .file("var/lib/app/kept", b"kept", pax={"SCHILY.xattr.user.note": "zstd"})
        .bytes()
    )
    top = (
        Layer()
        .dir("etc")
        .file("etc/added", b"second layer")
        .dir("var/lib/app", mode=0o750)
        .file("var/lib/app/.wh.gone", b"")
        .bytes()
    )
    return [_unpadded(base), _unpadded(top)]


def _push(layout: Path, ref: str, fmt: str) -> list[str]:
    raw = push_manifest(layout, "latest", ref, compress=fmt)
    return [layer["mediaType"] for layer in json.loads(raw)["layers"]]


def test_zstd_images_unpack_like_their_gzip_twin(
    tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("skopeo", "docker-registry", root=True)
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    layout, _ = oci_layout(tmp_path, _layers(), gz=False)
    trees = {}
    for fmt, media in (("zstd", ZSTD), ("zstd:chunked", ZSTD), ("gzip", GZIP)):
        name = fmt.replace(":", "-")
        with registry(tmp_path / f"reg-{name}") as host:
            ref = f"{host}/zstd/{name}:1"
            assert _push(layout, ref, fmt) == [media, media]
            dest = tmp_path / name
            cos("pull-image", "--tls-verify=false", ref, str(dest))
        trees[fmt] = tree(dest)
    assert (tmp_path / "zstd/etc/added").read_bytes() == b"second layer"
    assert not (tmp_path / "zstd/var/lib/app/gone").exists()
    gz_entries, gz_links = trees["gzip"]
    assert gz_links == [["etc/again", "etc/big"]]
    for fmt in ("zstd", "zstd:chunked"):
        entries, links = trees[fmt]
        assert differences(entries, gz_entries) == [], fmt
        assert links == gz_links, fmt
