"""The fault-injecting proxy against a real registry.

Tests of retry and resume logic trust the proxy to break responses exactly as asked;
these tests pin down that contract, so a failure elsewhere points at the client under
test and not at the test harness.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import random
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.faultproxy import Fault, FaultProxy, Record

pytestmark = pytest.mark.integration

REPO = "faultproxy/test"
SIZE = 300_000  # five 64 KiB chunks, big enough that cuts land mid-body
BLOB = random.Random(20240601).randbytes(SIZE)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/{REPO}/blobs/{DIGEST}"
MISSING_PATH = f"/v2/{REPO}/blobs/sha256:{'0' * 64}"


def push_blob(addr: str, repo: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT ?digest=) straight to the registry."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = f"http://{addr}"
    start = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=30) as resp:
        assert resp.status == 202
        location = urllib.parse.urljoin(base, resp.headers["Location"])
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put, timeout=30) as resp:
        assert resp.status == 201
    return digest


@dataclass
class Got:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    error: Exception | None


def fetch(addr: str, path: str, headers: dict[str, str] | None = None) -> Got:
    """GET keeping whatever body arrived and the error that ended it, if any.

    read1() hands over what each recv() returned, so a reset cannot swallow bytes that
    did arrive (read(n) discards its partial buffer when the error comes mid-call), and
    an EOF short of Content-Length is reported as the IncompleteRead read() would raise.
    """
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = bytearray()
        error: Exception | None = None
        try:
            while piece := resp.read1(16384):
                body += piece
        except OSError as e:
            error = e
        if error is None and resp.length:
            error = http.client.IncompleteRead(bytes(body), resp.length)
        return Got(resp.status, resp.headers, bytes(body), error)
    finally:
        conn.close()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def upstream(local_registry: str) -> str:
    """The test registry, holding BLOB."""
    assert push_blob(local_registry, REPO, BLOB) == DIGEST
    return local_registry


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream) as p:
        yield p


def test_passes_requests_through_unchanged(proxy: FaultProxy) -> None:
    got = fetch(proxy.addr, BLOB_PATH)
    assert (got.status, got.error) == (200, None)
    assert got.body == BLOB
    assert got.headers["Docker-Content-Digest"] == DIGEST
    assert proxy.requests == [Record("GET", BLOB_PATH, None, 200, SIZE)]
    assert proxy.bytes_sent(f"/v2/{REPO}/blobs/") == SIZE


def test_range_request_gets_the_tail(proxy: FaultProxy) -> None:
    got = fetch(proxy.addr, BLOB_PATH, {"Range": "bytes=100-"})
    assert got.status == 206
    assert got.headers["Content-Range"] == f"bytes 100-{SIZE - 1}/{SIZE}"
    assert got.body == BLOB[100:]
    assert proxy.requests == [Record("GET", BLOB_PATH, "bytes=100-", 206, SIZE - 100)]


def test_drop_resets_the_connection_mid_body(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop", after_bytes=100_000))
    got = fetch(proxy.addr, BLOB_PATH)
    assert got.status == 200
    assert got.headers["Content-Length"] == str(SIZE)  # the real length is promised
    assert got.body == BLOB[:100_000]
    assert isinstance(got.error, ConnectionError | http.client.IncompleteRead)
    assert proxy.requests == [Record("GET", BLOB_PATH, None, 200, 100_000)]


def test_drop_is_an_error_for_urllib(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop", after_bytes=1000))
    with (
        urllib.request.urlopen(f"http://{proxy.addr}{BLOB_PATH}", timeout=30) as resp,
        pytest.raises((ConnectionError, http.client.IncompleteRead)),
    ):
        resp.read()


def test_drop_counts_bytes_from_the_start_of_a_range(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop", after_bytes=1000))
    got = fetch(proxy.addr, BLOB_PATH, {"Range": "bytes=100-"})
    assert got.status == 206
    assert got.body == BLOB[100:1100]
    assert got.error is not None


def test_truncate_ends_the_body_early_with_eof(proxy: FaultProxy) -> None:
    proxy.inject(Fault("truncate", after_bytes=70_000))
    with urllib.request.urlopen(f"http://{proxy.addr}{BLOB_PATH}", timeout=30) as resp:
        assert resp.headers["Content-Length"] == str(SIZE)
        with pytest.raises(http.client.IncompleteRead) as e:
            resp.read()
    assert e.value.partial == BLOB[:70_000]
    assert proxy.requests == [Record("GET", BLOB_PATH, None, 200, 70_000)]


@pytest.mark.parametrize("status", [503, 429, 500])
def test_status_answers_without_asking_upstream(proxy: FaultProxy, status: int) -> None:
    proxy.inject(Fault("status", status=status, path=r"/blobs/sha256:0+$"))
    # Upstream would say 404 for this digest: the injected status proves it was not asked.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{proxy.addr}{MISSING_PATH}", timeout=30)
    assert e.value.code == status
    assert json.loads(e.value.read()) == {
        "errors": [{"code": "UNAVAILABLE", "message": "injected"}]
    }
    assert e.value.headers.get("Retry-After") == ("1" if status == 429 else None)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://{proxy.addr}{MISSING_PATH}", timeout=30)
    assert e.value.code == 404


def test_corrupt_keeps_the_length_and_breaks_the_digest(proxy: FaultProxy) -> None:
    proxy.inject(Fault("corrupt"))
    got = fetch(proxy.addr, BLOB_PATH)
    assert (got.status, got.error) == (200, None)
    assert len(got.body) == SIZE
    assert sha(got.body) != DIGEST
    diff = [i for i, (a, b) in enumerate(zip(got.body, BLOB, strict=True)) if a != b]
    assert diff == [SIZE // 2]
    assert got.body[SIZE // 2] == BLOB[SIZE // 2] ^ 0xFF


def test_slow_paces_the_body(proxy: FaultProxy) -> None:
    proxy.inject(Fault("slow", delay=0.1))
    start = time.monotonic()
    got = fetch(proxy.addr, BLOB_PATH)
    elapsed = time.monotonic() - start
    assert got.body == BLOB
    chunks = -(-SIZE // (64 * 1024))
    assert elapsed >= chunks * 0.1


def test_slow_can_be_interrupted_mid_transfer(proxy: FaultProxy) -> None:
    proxy.inject(Fault("slow", delay=0.5, chunk=1000))
    host, port = proxy.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=0.2)
    conn.request("GET", BLOB_PATH)
    resp = conn.getresponse()
    with pytest.raises(TimeoutError):
        resp.read()
    conn.close()
    assert proxy.wait_idle(5)
    (record,) = proxy.requests
    assert 0 < record.sent < SIZE


def test_times_is_honoured_then_requests_pass(proxy: FaultProxy) -> None:
    fault = Fault("status", times=2)
    proxy.inject(fault)
    assert [fetch(proxy.addr, BLOB_PATH).status for _ in range(3)] == [503, 503, 200]
    assert fault.fired == 2
    assert proxy.pending == []


def test_queued_faults_apply_in_order(proxy: FaultProxy) -> None:
    proxy.inject(Fault("drop", after_bytes=10), Fault("truncate", after_bytes=20))
    proxy.inject(Fault("corrupt"))
    bodies = [fetch(proxy.addr, BLOB_PATH).body for _ in range(4)]
    assert [len(b) for b in bodies] == [10, 20, SIZE, SIZE]
    assert sha(bodies[2]) != DIGEST
    assert bodies[3] == BLOB
    assert [r.sent for r in proxy.requests] == [10, 20, SIZE, SIZE]


def test_faults_only_hit_matching_requests(proxy: FaultProxy) -> None:
    proxy.inject(Fault("status", path=r"/manifests/"))
    assert fetch(proxy.addr, BLOB_PATH).body == BLOB  # default: GET on /blobs/ only
    assert len(proxy.pending) == 1
    head = urllib.request.Request(f"http://{proxy.addr}{BLOB_PATH}", method="HEAD")
    proxy.inject(Fault("status", method="HEAD"))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(head, timeout=30)
    assert e.value.code == 503


def test_uploads_pass_and_locations_point_at_the_proxy(proxy: FaultProxy, upstream: str) -> None:
    proxy.inject(Fault("drop"))  # a blob GET fault must not touch uploads
    data = b"uploaded through the proxy" * 1000
    host, port = proxy.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    # Claim to be talking to the registry itself: its Location then names the registry,
    # which the proxy has to rewrite.
    conn.request("POST", f"/v2/{REPO}/blobs/uploads/", headers={"Host": upstream})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 202
    location = resp.headers["Location"]
    assert location.startswith(f"http://{proxy.addr}/"), location
    target = location.removeprefix(f"http://{proxy.addr}")

    # A chunked PATCH (what Go clients send for streams), then the closing PUT.
    pieces = [data[i : i + 7000] for i in range(0, len(data), 7000)]
    conn.request("PATCH", target, body=iter(pieces), encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 202
    target = urllib.parse.urlsplit(resp.headers["Location"])
    sep = "&" if target.query else "?"
    url = f"{target.path}?{target.query}{sep}digest={sha(data)}".replace("?&", "?")
    conn.request("PUT", url, body=b"", headers={"Content-Length": "0"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 201
    conn.close()

    direct = fetch(upstream, f"/v2/{REPO}/blobs/{sha(data)}")
    assert direct.body == data
    assert len(proxy.pending) == 1
    assert [r.method for r in proxy.requests] == ["POST", "PATCH", "PUT"]


def test_close_is_prompt_and_cuts_open_connections(upstream: str) -> None:
    proxy = FaultProxy(upstream)
    host, port = proxy.addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/v2/")
    conn.getresponse().read()  # the connection stays open (keep-alive)
    proxy.inject(Fault("slow", delay=30))
    slow = http.client.HTTPConnection(host, int(port), timeout=5)
    slow.request("GET", BLOB_PATH)
    slow.getresponse()  # headers arrive; the body is stalled for 30 s
    start = time.monotonic()
    proxy.close()
    assert time.monotonic() - start < 2
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/v2/")
        conn.getresponse()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1)
    conn.close()
    slow.close()


def test_unknown_fault_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")  # type: ignore[arg-type]


def _image() -> tuple[bytes, bytes, bytes]:
    """A minimal single-layer image: (layer.tar.gz, config, manifest)."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        content = b"hello from behind the proxy\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        t.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(tar.getvalue())]},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return layer, config, manifest


def test_skopeo_copies_through_the_proxy(proxy: FaultProxy, upstream: str, tmp_path: Path) -> None:
    """A real Go registry client (Accept lists, HEADs, redirects) works through it."""
    layer, config, manifest = _image()
    repo = "faultproxy/image"
    push_blob(upstream, repo, layer)
    push_blob(upstream, repo, config)
    put = urllib.request.Request(
        f"http://{upstream}/v2/{repo}/manifests/v1",
        data=manifest,
        method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    urllib.request.urlopen(put, timeout=30).close()

    out = tmp_path / "copy"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{proxy.addr}/{repo}:v1",
            f"dir:{out}",
        ],
        check=True,
        capture_output=True,
    )
    assert (out / sha(layer).removeprefix("sha256:")).read_bytes() == layer
    paths = [r.path for r in proxy.requests]
    assert f"/v2/{repo}/manifests/v1" in paths
    assert f"/v2/{repo}/blobs/{sha(layer)}" in paths
    assert proxy.bytes_sent(f"/v2/{repo}/blobs/") >= len(layer) + len(config)
