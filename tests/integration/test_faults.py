"""Pulls through a fault-injecting proxy: retry, resume, verify, or fail cleanly.

The registry is real; the proxy in front of it drops, truncates, corrupts, delays
or refuses chosen responses. Whatever happens, the layer store only ever holds
blobs whose bytes match their digest, and no half tree carries the name asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import cos, push_manifest, refused, tiny_layout
from tests.support.faultproxy import Fault, FaultProxy

pytestmark = pytest.mark.integration

BIG = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def images(local_registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """base: one incompressible 4 MiB layer; plus: base + one small layer."""
    layout = tmp_path_factory.mktemp("faults") / "oci"
    payload = os.urandom(BIG).hex()[:BIG]  # text, but random: gzip cannot shrink it much
    tiny_layout(layout, "base", {"big": payload})
    subprocess.run(["umoci", "config", "--image", f"{layout}:base", "--tag", "base"], check=True)
    small = layout.parent / "small.tar"
    import io
    import tarfile

    with tarfile.open(small, "w") as tar:
        data = b"one small layer\n" * 64
        info = tarfile.TarInfo("small")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:base", f"oci:{layout}:plus"], check=True
    )
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:plus", str(small)], check=True
    )
    base = json.loads(push_manifest(layout, "base", f"{local_registry}/faults/img:base"))
    push_manifest(layout, "plus", f"{local_registry}/faults/img:plus")
    return {
        "layout": str(layout),
        "payload": hashlib.sha256(payload.encode()).hexdigest(),
        # Faults aim at the big layer: the config is read (whole, retried) before the pull.
        "big": f"/blobs/{base['layers'][0]['digest']}",
    }


@pytest.fixture
def proxy(local_registry: str) -> Iterator[FaultProxy]:
    with FaultProxy(local_registry) as p:
        yield p


@pytest.fixture
def cache(tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def store_is_sound(cache: Path) -> list[str]:
    """Every blob under its digest verifies; returns the names of .partial leftovers."""
    blobs = cache / "oci/blobs/sha256"
    partial = []
    for b in blobs.iterdir() if blobs.is_dir() else []:
        if b.name.endswith(".partial"):
            partial.append(b.name)
            continue
        assert hashlib.sha256(b.read_bytes()).hexdigest() == b.name, f"corrupt blob {b.name}"
    return partial


def tags(cache: Path) -> list[str]:
    index = cache / "oci/index.json"
    if not index.exists():
        return []
    return [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in json.loads(index.read_text())["manifests"]
    ]


def pull(
    proxy: FaultProxy, tag: str, dest: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return cos(
        "pull-image", "--tls-verify=false", f"{proxy.addr}/faults/img:{tag}", str(dest), check=check
    )


def blob_gets(proxy: FaultProxy) -> list:  # type: ignore[type-arg]
    return [r for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]


@pytest.mark.parametrize(
    "fault",
    [
        Fault("drop", after_bytes=BIG // 3),
        Fault("truncate", after_bytes=BIG // 2),
        Fault("status", times=2, status=503),
        Fault("status", status=429),
        Fault("corrupt"),
        Fault("slow", delay=0.01, chunk=512 * 1024),
    ],
    ids=["drop", "truncate", "503x2", "429", "corrupt", "slow"],
)
def test_transient_faults_are_survived(
    fault: Fault, proxy: FaultProxy, images: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    fault = dataclasses.replace(fault, path=images["big"])
    proxy.inject(fault)
    pull(proxy, "base", tmp_path / "tree")
    tree_hash = hashlib.sha256((tmp_path / "tree/big").read_bytes()).hexdigest()
    assert tree_hash == images["payload"]
    assert store_is_sound(cache) == []
    assert fault.fired == fault.times
    if fault.kind in ("drop", "truncate"):
        # The interrupted blob continued where it stopped instead of starting over.
        resumed = [r for r in blob_gets(proxy) if r.range]
        assert resumed and int(resumed[0].range.split("=")[1].rstrip("-")) > 0


def test_persistent_corruption_fails_cleanly(
    proxy: FaultProxy, images: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    proxy.inject(Fault("corrupt", times=100, path=images["big"]))
    r = pull(proxy, "base", tmp_path / "tree", check=False)
    refused(r, 4, "do not match the digest")
    assert not (tmp_path / "tree").exists() and not (tmp_path / ".tree.partial").exists()
    assert store_is_sound(cache) == [] and tags(cache) == []


def test_dropped_link_then_later_pull_resumes(
    proxy: FaultProxy, images: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    # Some bytes arrive, then the link stays down for good.
    big = images["big"]
    proxy.inject(
        Fault("drop", after_bytes=BIG // 8, path=big),
        Fault("drop", times=100, after_bytes=0, path=big),
    )
    r = pull(proxy, "base", tmp_path / "tree", check=False)
    refused(r, 4, "attempts")
    assert tags(cache) == [] and not (tmp_path / "tree").exists()
    assert store_is_sound(cache)  # the interrupted blob waits as .partial
    proxy.clear()
    pull(proxy, "base", tmp_path / "tree")
    first = blob_gets(proxy)
    assert any(r.range and r.sent < BIG for r in first), first


def test_ctrl_c_leaves_the_store_consistent(
    proxy: FaultProxy, images: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    # Slow enough (≈ 9 s for the big blob) that a loaded machine still catches it mid-blob.
    proxy.inject(Fault("slow", delay=0.5, chunk=128 * 1024, times=100, path=images["big"]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cos",
            "pull-image",
            "--tls-verify=false",
            f"{proxy.addr}/faults/img:base",
            str(tmp_path / "tree"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        # As from a terminal: a suite started in the background (`cmd &` without job
        # control) ignores SIGINT, and a child would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        sizes = []
        for part in cache.rglob("*.partial"):
            try:
                sizes.append(part.stat().st_size)
            except FileNotFoundError:  # renamed into place meanwhile
                continue
        if any(n > 256 * 1024 for n in sizes):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the pull ended before it could be interrupted mid-blob"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert tags(cache) == [] and not (tmp_path / "tree").exists()
    assert store_is_sound(cache)  # a .partial, never a blob with wrong bytes
    proxy.clear()
    pull(proxy, "base", tmp_path / "tree")
    assert any(r.range for r in blob_gets(proxy))
    assert store_is_sound(cache) == []


def test_one_new_small_layer_is_all_that_travels(
    proxy: FaultProxy, images: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    pull(proxy, "base", tmp_path / "t1")
    proxy.clear()
    pull(proxy, "plus", tmp_path / "t2")
    layout = Path(images["layout"])
    manifest_digest = next(
        m["digest"]
        for m in json.loads((layout / "index.json").read_text())["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == "plus"
    )
    manifest_path = layout / "blobs/sha256" / manifest_digest[7:]
    manifest = json.loads(manifest_path.read_text())
    need = (
        manifest_path.stat().st_size + manifest["config"]["size"] + manifest["layers"][-1]["size"]
    )
    sent = sum(r.sent for r in proxy.requests if "/manifests/" in r.path or "/blobs/" in r.path)
    assert sent <= 1.05 * need, (sent, need, proxy.requests)
    assert (tmp_path / "t2/small").exists()
