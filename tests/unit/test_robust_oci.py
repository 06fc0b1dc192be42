"""Hostile OCI documents (index, manifest, config, signatures) and layer headers against
inspect, pull-image and the upgrade's pre-flight; tests/support/hostile_oci.py and
hostile_tar.py draw them, the actions are called as the CLI calls them.

Whatever comes in, each entry point gives a result or one CosError — a documented exit
code and one error line, never `internal error` — writes nothing outside what it
was asked to make (a failed pull leaves no DIR; inspect and the refused upgrade write
nothing at all), and stays within the memory the size limits allow. The upgrade runs
against a stub registry on 127.0.0.1 and stops where it would start pulling, the last
step before its first write; what its pre-flight lets through must be what the
unpacker accepts. `make test-extended` runs each property on 2000 inputs; with `-s`
the counts are printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import resource
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cos.actions.images import PullRequest, inspect_image, pull_image
from cos.actions.upgrade import UpgradeRequest, upgrade
from cos.boot import assessment, grubenv
from cos.config import Config
from cos.errors import MEANINGS, CosError, ExitCode
from cos.oci.layout import OciLayout
from cos.oci.store import LayerStore, RemoteImage
from cos.snapshot.base import SNAPSHOTS_DIR
from cos.system.installed import Installed
from cos.system.state import ImageState, InstallState, SnapshotterState, write_state
from tests.support.hostile_oci import MANIFEST, Image, images, layer_images, public_key
from tests.support.malicious_layers import snapshot, snapshot_diff
from tests.support.stub_registry import StubRegistry, plain_http, stub_registry

DOCUMENTED = {int(c) for c in MEANINGS} - {int(ExitCode.BUG)}
MEMORY = 256 << 20  # how far above the RSS before it any input may take the process
FAST = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LONG = settings(FAST, max_examples=2000)
COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(
        "\nrobust-oci: "
        + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
        + f"; peak RSS {_peak() >> 20} MiB"
    )


def _peak() -> int:
    """The process's RSS high-water mark (VmHWM; reset by _reset_peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    """Start the high-water mark afresh: in a run of the whole suite, earlier tests
    (disk images, VMs' helpers) have raised it long before this block."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def bounded_memory() -> Iterator[None]:
    """The peak RSS (a high-water mark) stays within MEMORY of the RSS before the block:
    an input that made the process grow past it shows as a new peak."""
    _reset_peak()
    before = _rss()
    try:
        yield
    finally:
        assert _peak() - before < MEMORY, f"peak {_peak() >> 20} MiB, {before >> 20} MiB before"


def attempt(what: str, action: Callable[[], object]) -> bool:
    """Whether action succeeded. A refusal is a CosError of one line with a documented
    exit code (what the CLI prints as `cos: error:`); any other exception fails the test,
    as the CLI would report it as an internal error."""
    with bounded_memory(), contextlib.redirect_stdout(io.StringIO()):
        try:
            action()
        except CosError as exc:
            COUNTS[f"{what} refused"] += 1
            assert exc.message and "\n" not in exc.message, exc.message
            assert int(exc.exit_code) in DOCUMENTED, exc.exit_code
            return False
    COUNTS[f"{what} ok"] += 1
    return True


@pytest.fixture
def box(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("robust-oci")


@contextlib.contextmanager
def sandbox(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh directory per input, the cwd, removed afterwards."""
    work = base / "w"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        yield work
    finally:
        monkeypatch.chdir(base)
        shutil.rmtree(work, ignore_errors=True)


# --- inspect and pull-image over an oci: layout -------------------------------------------


def probe_layout(base: Path, monkeypatch: pytest.MonkeyPatch, img: Image, empty: bool) -> None:
    """inspect writes nothing; pull-image makes DIR whole or not at all (an empty DIR
    given stays an empty DIR), and nothing else changes."""
    with sandbox(base, monkeypatch) as work:
        img.write_layout(work / "layout")
        ref = f"oci:{work / 'layout'}:latest"
        cfg = Config(cache_dir=str(work / "cache"))
        if img.signing is not None:
            cfg = replace(cfg, verify=True, cosign_key=str(public_key(work / "k.pub")))
        out = work / "out"
        if empty:
            out.mkdir()
        before = snapshot(work, out)
        attempt("inspect", lambda: inspect_image(ref, cfg, as_json=empty))
        after = snapshot(work, out)
        assert after == before, snapshot_diff(before, after)
        pulled = attempt("pull-image", lambda: pull_image(PullRequest(ref, Path("out")), cfg))
        after = snapshot(work, out)
        assert after == before, snapshot_diff(before, after)
        if pulled:
            assert (out / "etc").is_dir()
        elif empty:
            assert out.is_dir() and not any(out.iterdir())
        else:
            assert not os.path.lexists(out)


@pytest.mark.root
@FAST
@given(img=images(), empty=st.booleans())
def test_hostile_documents_in_a_layout(
    box: Path, monkeypatch: pytest.MonkeyPatch, img: Image, empty: bool
) -> None:
    probe_layout(box, monkeypatch, img, empty)


@pytest.mark.root
@FAST
@given(img=layer_images(), empty=st.booleans())
def test_hostile_layer_headers(
    box: Path, monkeypatch: pytest.MonkeyPatch, img: Image, empty: bool
) -> None:
    probe_layout(box, monkeypatch, img, empty)


# --- the upgrade pre-flight against a registry --------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[StubRegistry]:
    with stub_registry() as registry:
        yield registry


class Preflight(Exception):
    """Raised where the upgrade would start writing: the pre-flight accepted remote."""

    def __init__(self, remote: RemoteImage) -> None:
        super().__init__("pre-flight passed")
        self.remote = remote


def _installed(root: Path) -> Installed:
    """An installed system: snapshot 1 active from another image, state.yaml, grubenv."""
    inst = Installed(root / "state", root / "oem", root / "run")
    for d in (inst.state_dir / SNAPSHOTS_DIR / "1", inst.oem_dir, inst.run_dir):
        d.mkdir(parents=True)
    (inst.state_dir / f"{SNAPSHOTS_DIR}/1/snapshot.img").write_bytes(b"img")
    os.symlink("1/snapshot.img", inst.state_dir / f"{SNAPSHOTS_DIR}/active")
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    state.snapshots[1] = ImageState(
        source="127.0.0.1:9/old:1", digest="sha256:" + "1" * 64, label="COS_SNAP1", fs="ext4",
        date="d", from_action="install", active=True,
    )  # fmt: skip
    write_state(inst.state_dir, state)
    grubenv.write(assessment.env_path(inst.oem_dir), {})
    (inst.run_dir / "active_mode").touch()
    (inst.run_dir / "image").write_text(f"{SNAPSHOTS_DIR}/1/snapshot.img")
    return inst


@pytest.fixture
def preflight_only(box: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """upgrade() of the system in box/sys up to its first write: no tools, no hooks of
    this machine, plain HTTP. One system serves every input: none may change it."""
    _installed(box / "sys")

    def stop(self: LayerStore, remote: RemoteImage, *args: Any, **kwargs: Any) -> None:
        raise Preflight(remote)

    monkeypatch.setattr("cos.run.require", lambda *tools: None)
    monkeypatch.setattr("cos.actions.upgrade.system_sources", lambda cfg: [])
    monkeypatch.setattr(LayerStore, "pull", stop)
    plain_http(monkeypatch)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def probe_upgrade(
    base: Path, stub: StubRegistry, img: Image, serve_index: bool, media: str
) -> None:
    blobs, docs = img.build()
    stub.routes.clear()
    stub.requests.clear()
    for digest, data in blobs.items():
        stub.serve(f"/v2/os/blobs/{digest}", data)
        stub.serve(f"/v2/os/manifests/{digest}", data, Content_Type=media)
    top = docs["index"] if serve_index else docs["manifest"]
    stub.serve("/v2/os/manifests/latest", top, Content_Type=media)
    inst = Installed(base / "sys/state", base / "sys/oem", base / "sys/run")
    before = snapshot(base / "sys", base / "sys/none")
    request = UpgradeRequest(system=f"{stub.host}/os:latest", installed=inst)
    try:
        with bounded_memory():
            upgrade(request, Config(tls_verify=False))
        raise AssertionError("the upgrade went past its pre-flight")
    except Preflight as stop:
        COUNTS["upgrade pre-flight passed"] += 1
        remote = stop.remote
        for digest, size in (*remote.layers, remote.config):
            assert isinstance(size, int) and size >= 0 and not isinstance(size, bool), size
            assert digest.startswith("sha256:") and len(digest) == 71, digest
        assert _digest(remote.manifest) == remote.digest
        # What passed is what the unpacker takes: no image fails its checks after the pull.
        accepted = OciLayout(base / "accepted")
        shutil.rmtree(accepted.root, ignore_errors=True)
        accepted.blobs.mkdir(parents=True)
        (accepted.root / "index.json").write_text("{}")
        for data in (remote.manifest, remote.config_blob):
            accepted.blob(_digest(data)).write_bytes(data)
        assert len(accepted.image_layers(remote.digest)) == len(remote.layers)
    except CosError as exc:
        COUNTS["upgrade refused"] += 1
        assert exc.message and "\n" not in exc.message, exc.message
        assert int(exc.exit_code) in DOCUMENTED, exc.exit_code
    after = snapshot(base / "sys", base / "sys/none")
    assert after == before, snapshot_diff(before, after)


_MEDIA = st.sampled_from([MANIFEST, "", "application/octet-stream", "text/html; charset=x"])


@FAST
@given(img=images(), serve_index=st.booleans(), media=_MEDIA)
def test_hostile_documents_in_a_registry(
    box: Path,
    stub: StubRegistry,
    preflight_only: None,
    img: Image,
    serve_index: bool,
    media: str,
) -> None:
    probe_upgrade(box, stub, img, serve_index, media)


# --- the same properties on many more inputs (make test-extended) --------------------------


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> None:
    """Only when asked for (`-m extended`): a bare `pytest` stays the fast tier."""
    if "extended" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("a long run: make test-extended")


@pytest.mark.extended
@pytest.mark.root
@LONG
@given(img=st.one_of(images(), layer_images()), empty=st.booleans())
def test_many_hostile_layouts(
    long_run: None, box: Path, monkeypatch: pytest.MonkeyPatch, img: Image, empty: bool
) -> None:
    probe_layout(box, monkeypatch, img, empty)


@pytest.mark.extended
@LONG
@given(img=st.one_of(images(), layer_images()), serve_index=st.booleans(), media=_MEDIA)
def test_many_hostile_registry_images(
    long_run: None,
    box: Path,
    stub: StubRegistry,
    preflight_only: None,
    img: Image,
    serve_index: bool,
    media: str,
) -> None:
    probe_upgrade(box, stub, img, serve_index, media)
