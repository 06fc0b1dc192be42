"""zstd layers through the real zstandard module: frames, skippable frames, damage.

zstd:chunked layers are many zstd frames with skippable frames (a table of contents)
between and after them; the decompressed stream is the tar alone. Every test goes
through a layout, so the blob digest and the config's diff_id are checked too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import zstandard

from cos.errors import ImageError
from cos.oci.unpack import unpack_image
from tests.support.malicious_layers import Layer

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


def _put(layout: Path, data: bytes) -> dict[str, object]:
    h = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / h).write_bytes(data)
    return {"digest": f"sha256:{h}", "size": len(data)}


def zstd_layout(tmp_path: Path, blobs: list[bytes], tars: list[bytes]) -> tuple[Path, str]:
    """A layout whose layers are the given zstd blobs, diff_ids those of the given tars."""
    layout = tmp_path / "oci"
    (layout / "blobs/sha256").mkdir(parents=True)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars],
        },
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_put(layout, json.dumps(config).encode()),
        },
        "layers": [{"mediaType": ZSTD, **_put(layout, b)} for b in blobs],
    }
    m = _put(layout, json.dumps(manifest).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **m}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout, str(m["digest"])


def skippable(data: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A50, len(data)) + data


def chunked(tar: bytes, pieces: int = 4) -> bytes:
    """Like zstd:chunked: one frame per piece, skippable frames between and after."""
    step = -(-len(tar) // pieces)
    c = zstandard.ZstdCompressor()
    out = b""
    for i in range(0, len(tar), step):
        out += c.compress(tar[i : i + step]) + skippable(b"toc %d" % i)
    return out + skippable(b"footer" * 8)


def sample() -> bytes:
    return (
        Layer()
        .dir("./")
        .file("a", b"alpha" * 50_000)
        .symlink("b", "a")
        .file("c", bytes(range(256)) * 4096)
        .bytes()
    )


@pytest.mark.root
@pytest.mark.parametrize("shape", ["one-frame", "chunked"])
def test_zstd_layer_unpacks(tmp_path: Path, shape: str) -> None:
    tar = sample()
    blob = zstandard.ZstdCompressor().compress(tar) if shape == "one-frame" else chunked(tar)
    layout, digest = zstd_layout(tmp_path, [blob], [tar])
    dest = tmp_path / "rootfs"
    unpack_image(layout, digest, dest)
    assert (dest / "a").read_bytes() == b"alpha" * 50_000
    assert (dest / "c").read_bytes() == bytes(range(256)) * 4096
    assert (dest / "b").readlink() == Path("a")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda b: b[: len(b) // 2], "ends inside|diff_id"),  # the descriptor names the cut blob
        (lambda b: b + b"junk", "corrupt zstd"),
        (lambda b: b[:4] + bytes(64) + b[68:], "corrupt zstd"),
    ],
    ids=["truncated", "trailing-garbage", "corrupt"],
)
def test_damaged_zstd_is_refused_before_the_tree_appears(
    tmp_path: Path, damage: object, match: str
) -> None:
    tar = sample()
    blob = damage(zstandard.ZstdCompressor().compress(tar))  # type: ignore[operator]
    layout, digest = zstd_layout(tmp_path, [blob], [tar])
    dest = tmp_path / "rootfs"
    with pytest.raises(ImageError, match=match):
        unpack_image(layout, digest, dest)
    assert not dest.exists()
