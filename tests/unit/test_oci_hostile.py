"""Hostile OCI documents, signatures, registry replies and tar headers: each shape
that once ended in an internal error, unbounded memory or an endless loop, now
refused with one line."""

from __future__ import annotations

import contextlib
import gzip
import io
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cos.actions.images import PullRequest, inspect_image, pull_image
from cos.config import Config
from cos.errors import CosError
from cos.oci import streams
from cos.oci.streams import CappedTarInfo
from tests.support.hostile_oci import Image, public_key
from tests.support.hostile_tar import assemble, header, octal, pad


def refused(action: Any) -> CosError:
    """The error action raises: a CosError of one line (never another exception)."""
    with pytest.raises(CosError) as err, contextlib.redirect_stdout(io.StringIO()):
        action()
    assert err.value.message and "\n" not in err.value.message
    return err.value


def _inspect(tmp_path: Path, img: Image, key: bool = False) -> CosError:
    layout = img.write_layout(tmp_path / "layout")
    cfg = Config(cache_dir=str(tmp_path / "cache"))
    if key:
        cfg = replace(cfg, verify=True, cosign_key=str(public_key(tmp_path / "k.pub")))
    return refused(lambda: inspect_image(f"oci:{layout}:latest", cfg, as_json=False))


# --- tar headers ---------------------------------------------------------------------------


def _layer_image(*pieces: bytes) -> Image:
    return Image(layer=assemble(list(pieces)))


def test_a_chain_of_extended_headers_is_refused(tmp_path: Path) -> None:
    chain = header(name=b"././@PaxHeader", type=b"x") * 3000 + header(name=b"m")
    img = _layer_image(chain)
    assert "chained tar extended headers" in _inspect(tmp_path / "i", img).message
    layout = img.write_layout(tmp_path / "p")
    cfg = Config(cache_dir=str(tmp_path / "cache"))
    pull = PullRequest(f"oci:{layout}:latest", tmp_path / "out")
    assert "chained tar extended headers" in refused(lambda: pull_image(pull, cfg)).message


@pytest.mark.parametrize("name", [b"big", b"etc/.wh.gone", b".wh..wh..opq"])
def test_a_member_larger_than_the_layer_is_refused_at_once(tmp_path: Path, name: bytes) -> None:
    """tarfile skips a member's data by reading block after block for as long as its
    header says, past the end: a 1 TiB claim once kept inspect busy for minutes."""
    size = b"\x80" + (1 << 40).to_bytes(11, "big")
    img = _layer_image(header(name=name, size=size))
    start = time.monotonic()
    assert "archive ends" in _inspect(tmp_path / "i", img).message
    layout = img.write_layout(tmp_path / "p")
    cfg = Config(cache_dir=str(tmp_path / "cache"))
    pull = PullRequest(f"oci:{layout}:latest", tmp_path / "out")
    refused(lambda: pull_image(pull, cfg))
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def _pax(records: dict[str, str]) -> bytes:
    out = b""
    for k, v in records.items():
        body = f" {k}={v}\n".encode()
        n = len(body) + len(str(len(body)))
        out += str(n + len(str(n)) - len(str(len(body)))).encode() + body
    return header(name=b"././@PaxHeader", type=b"x", size=octal(len(out))) + pad(out)


def _sparse_10(extents: int) -> bytes:
    """A GNU sparse 1.0 member whose map (at the start of its data) lists extents."""
    pax = _pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "f"})
    data = pad(b"%d\n" % extents + b"1\n" * 2 * extents)
    return pax + header(name=b"f", size=octal(len(data))) + pad(data)


def _old_gnu_sparse(blocks: int) -> bytes:
    """An old GNU sparse member ('S') with blocks extension blocks of 21 extents each."""
    first = bytearray(header(name=b"f", type=b"S", magic=b"ustar  \0"))
    first[482] = 1  # isextended
    first[148:156] = b" " * 8
    first[148:156] = b"%06o\0 " % sum(first)
    ext = bytearray(512)
    for i in range(21):
        ext[i * 24 : i * 24 + 24] = octal(i + 1) + octal(1)
    ext[504] = 1
    return bytes(first) + bytes(ext) * blocks


@pytest.mark.parametrize(
    "piece", [_sparse_10(1_000_000), _old_gnu_sparse(20_000)], ids=["gnu-1.0", "old-gnu"]
)
def test_sparse_maps_are_bounded(tmp_path: Path, piece: bytes) -> None:
    """A sparse map is a list in memory: a few KB of gzip once made hundreds of MB."""
    assert len(gzip.compress(piece)) < 100_000  # what the layer costs the attacker
    err = _inspect(tmp_path, _layer_image(piece))
    assert "sparse map" in err.message


def test_a_small_sparse_map_is_read() -> None:
    tar = assemble([_sparse_10(3)])
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r|", tarinfo=CappedTarInfo) as tf:
        names = [m.name for m in tf]
    assert "f" in names and "etc/os-release" in names
    assert streams.MAX_MEMBER_HEADERS >= 2 * streams.MAX_EXT_HEADER
