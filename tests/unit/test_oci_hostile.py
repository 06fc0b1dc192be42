"""Hostile OCI documents, signatures, registry replies and tar headers: each shape
that once ended in an internal error, unbounded memory or an endless loop, now
refused with one line."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cos.actions.images import PullRequest, inspect_image, pull_image
from cos.config import Config
from cos.errors import CosError, ImageError
from cos.oci import bundle, cosign, referrers, registry, streams
from cos.oci.layout import MANIFEST_TYPES, LayerBlob
from cos.oci.overlayform import unpack_layer
from cos.oci.reference import parse_ref
from cos.oci.registry import Client, RegistryError
from cos.oci.store import LayerStore, inspect_remote
from cos.oci.streams import CappedTarInfo
from tests.support.hostile_oci import TAR, Image, Op, Raw, Signing, deep, public_key
from tests.support.hostile_tar import assemble, header, octal, pad
from tests.support.stub_registry import Reply, StubRegistry, plain_http, stub_registry


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


# --- JSON nested deeper than the parser recurses ------------------------------------------


@pytest.mark.parametrize("where", ["index", "manifest", "config"])
def test_deeply_nested_documents_are_refused(tmp_path: Path, where: str) -> None:
    path = {"index": ("manifests", 0, "annotations"), "manifest": ("annotations",)}
    ops = [Op("set", path.get(where, ("config",)), deep(100_000))]
    err = _inspect(tmp_path, Image(**{where: ops}))
    assert "nested too deeply" in err.message


@pytest.mark.parametrize("kind", ["sig", "bundle"])
def test_deeply_nested_signature_documents_are_refused(tmp_path: Path, kind: str) -> None:
    """A signed payload or a bundle nested thousands deep: no signature, not a crash."""
    doc = Op("doc", value=deep(30_000))  # under the payload's 64 KiB cap: it gets parsed
    signing = Signing("sig", middle=[doc]) if kind == "sig" else Signing("bundle", inner=[doc])
    err = _inspect(tmp_path, Image(signing=signing), key=True)
    assert "refusing" in err.message


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


@pytest.mark.parametrize(
    ("piece", "words"),
    [
        (
            header(name=b"././@PaxHeader", type=b"x") * 3000 + header(name=b"m"),
            f"more than {streams.MAX_EXT_CHAIN} chained",
        ),
        (header(name=b".wh..wh..opq", size=b"\x80" + (1 << 40).to_bytes(11, "big")), "ends"),
        (_sparse_10(1_000_000), "sparse map"),
        (_old_gnu_sparse(20_000), "sparse map"),
    ],
    ids=["chain", "size", "gnu-1.0", "old-gnu"],
)
def test_a_layer_in_overlayfs_form_has_the_same_header_limits(
    tmp_path: Path, piece: bytes, words: str
) -> None:
    """The layers backend unpacks each layer on its own (overlayform), through the
    unpacker's tar reader: the same headers are refused there, and nothing is left."""
    blob = tmp_path / "layer.tar"
    blob.write_bytes(piece + b"\0" * 1024)
    start = time.monotonic()
    err = refused(lambda: unpack_layer(LayerBlob(blob, TAR, "layer 1/1"), tmp_path / "tree"))
    assert words in err.message
    assert time.monotonic() - start < 30
    assert not (tmp_path / "tree").exists()


# --- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        Op("set", ("layers", 0, "size"), "12"),
        Op("set", ("layers", 0, "size"), [1]),
        Op("set", ("layers", 0, "annotations"), ["a"]),
        Op("set", ("layers",), {"a": 1}),
        Op("set", ("layers", 0), "x"),
    ],
    ids=["size-text", "size-list", "annotations-list", "layers-object", "layer-text"],
)
def test_malformed_signature_manifests_are_refused(tmp_path: Path, op: Op) -> None:
    err = _inspect(tmp_path, Image(signing=Signing("sig", outer=[op])), key=True)
    assert err.message.startswith("refusing")


def test_a_referrers_index_without_a_list_is_refused(tmp_path: Path) -> None:
    signing = Signing("bundle", outer=[Op("set", ("manifests",), 5)])
    err = _inspect(tmp_path, Image(signing=signing), key=True)
    assert "referrers" in err.message


def test_a_referrer_whose_layers_are_not_a_list_is_skipped(tmp_path: Path) -> None:
    signing = Signing("bundle", middle=[Op("set", ("layers",), {"": None})])
    err = _inspect(tmp_path, Image(signing=signing), key=True)
    assert err.message.endswith("the image is not signed")


def test_log_entries_that_are_not_a_list_are_none() -> None:
    doc = {"mediaType": bundle.BUNDLE_TYPE, "verificationMaterial": {"tlogEntries": 5}}
    assert bundle.Bundle(doc).tlog_entries == []


# --- the upgrade's pre-flight: the registry's manifest and config --------------------------


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Any:
    plain_http(monkeypatch)
    with stub_registry() as registry:
        yield registry


def _serve(stub: StubRegistry, img: Image) -> None:
    blobs, docs = img.build()
    for digest, data in blobs.items():
        stub.serve(f"/v2/os/blobs/{digest}", data)
        stub.serve(f"/v2/os/manifests/{digest}", data, Content_Type=MANIFEST_TYPES[0])
    stub.serve("/v2/os/manifests/latest", docs["manifest"], Content_Type=MANIFEST_TYPES[0])


@pytest.mark.parametrize(
    ("op", "words"),
    [
        (Op("set", ("layers", 0, "size"), Raw("1e999")), "no valid size"),
        (Op("set", ("layers", 0, "size"), "12"), "no valid size"),
        (Op("set", ("layers", 0, "size"), -1), "no valid size"),
        (Op("set", ("config", "size"), True), "no valid size"),
        (Op("set", ("layers", 0, "mediaType"), "application/x-evil"), "unsupported media type"),
        (Op("set", ("mediaType",), "text/plain"), "unsupported type"),
        (Op("set", ("layers",), Raw("[" * 100_000 + "]" * 100_000)), "nested too deeply"),
    ],
    ids=["inf", "text", "negative", "bool", "layer-type", "manifest-type", "deep"],
)
def test_a_manifest_the_unpacker_would_refuse_is_refused_before_the_pull(
    stub: StubRegistry, op: Op, words: str
) -> None:
    _serve(stub, Image(manifest=[op]))
    err = refused(lambda: inspect_remote(parse_ref(f"{stub.host}/os:latest"), tls_verify=False))
    assert isinstance(err, ImageError) and words in err.message


@pytest.mark.parametrize(
    ("ops", "words"),
    [
        ([Op("set", ("rootfs", "diff_ids"), [])], "lists 0 diff_ids"),
        ([Op("del", ("rootfs",))], "no rootfs.diff_ids"),
        ([Op("doc", value=[1])], "not a JSON object"),
    ],
)
def test_the_config_is_checked_before_the_pull(
    stub: StubRegistry, ops: list[Op], words: str
) -> None:
    img = Image(config=ops)
    _serve(stub, img)
    err = refused(lambda: inspect_remote(parse_ref(f"{stub.host}/os:latest"), tls_verify=False))
    assert words in err.message
    layer = hashlib.sha256(img.build()[1]["layer"]).hexdigest()
    assert not any(layer in p for p in stub.requests)  # refused before any layer moved


def test_the_config_is_read_once(stub: StubRegistry, tmp_path: Path) -> None:
    img = Image()
    _serve(stub, img)
    docs = img.build()[1]
    remote = inspect_remote(parse_ref(f"{stub.host}/os:latest"), tls_verify=False)
    assert remote.config_blob == docs["config"]
    store = LayerStore(tmp_path / "store")
    store.pull(remote, "snapshot-1", tls_verify=False)
    config = f"/v2/os/blobs/{remote.config[0]}"
    assert stub.requests.count(config) == 1
    assert store.layout.blob(remote.config[0]).read_bytes() == docs["config"]
    assert store.layout.image_layers(remote.digest)


# --- registry replies ----------------------------------------------------------------------


def test_a_config_corrupted_on_the_way_is_fetched_again(
    stub: StubRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "ATTEMPTS", 2)
    img = Image()
    _serve(stub, img)
    config = img.build()[1]["config"]
    path = f"/v2/os/blobs/sha256:{hashlib.sha256(config).hexdigest()}"
    stub.routes[path].insert(0, Reply(200, config[:-1] + b"!"))
    remote = inspect_remote(parse_ref(f"{stub.host}/os:latest"), tls_verify=False)
    assert remote.config_blob == config and stub.requests.count(path) == 2


@pytest.mark.parametrize("what", ["manifest", "config"])
def test_a_reply_cut_short_is_a_clean_error(stub: StubRegistry, what: str) -> None:
    """A connection that ends inside the body (a proxy, a reset) is a transient failure,
    retried; the bytes that did arrive are not taken for the document."""
    img = Image()
    _serve(stub, img)
    config = img.build()[1]["config"]
    path = "/v2/os/manifests/latest"
    if what == "config":
        path = f"/v2/os/blobs/sha256:{hashlib.sha256(config).hexdigest()}"
    good = stub.routes[path][0]
    stub.routes[path] = [Reply(200, good.body[:10], good.headers, length=len(good.body))]
    err = refused(lambda: inspect_remote(parse_ref(f"{stub.host}/os:latest"), tls_verify=False))
    assert "cut short" in err.message


@pytest.mark.parametrize("token", [b"[1, 2]", b'{"token": "t\\r\\nX-Evil: 1"}', b'{"token": 5}'])
def test_a_token_reply_that_is_no_token_means_no_credentials(
    stub: StubRegistry, token: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply that is not an object, or a token that would break the header line."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no auth.json of this machine
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    challenge = f'Bearer realm="http://{stub.host}/token",service="s"'
    stub.serve("/v2/os/manifests/latest", b"", 401, WWW_Authenticate=challenge)
    stub.serve("/token?service=s&scope=repository%3Aos%3Apull", token)
    with pytest.raises(RegistryError, match="asks for credentials"):
        Client(stub.host, tls_verify=False).manifest("os", "latest")


@pytest.mark.parametrize(
    "parse",
    [bundle.parse, cosign.signed_digest, referrers._entries],
    ids=["bundle", "payload", "referrers-index"],
)
def test_signature_documents_nested_too_deeply_are_bad_input(parse: Any) -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse(b"[" * 30_000 + b"]" * 30_000)
