"""The layer store's view of what a pull must fetch, given what the snapshotter holds."""

from __future__ import annotations

from pathlib import Path

from cos.oci.reference import parse_ref
from cos.oci.store import LayerStore, RemoteImage, spool_for

A, B, CONFIG = ("sha256:" + c * 64 for c in "abc")
DIFF_A, DIFF_B = ("sha256:" + c * 64 for c in "de")


def _remote(diff_ids: tuple[str, ...] = (DIFF_A, DIFF_B)) -> RemoteImage:
    return RemoteImage(
        parse_ref("127.0.0.1:5000/os:v2"),
        "sha256:" + "f" * 64,
        ((A, 100), (B, 200)),
        (CONFIG, 10),
        diff_ids=diff_ids,
    )


def test_layers_held_in_the_snapshotters_form_are_not_fetched(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    remote = _remote()
    assert remote.layer_ids() == [(A, DIFF_A), (B, DIFF_B)]
    assert store.missing(remote) == [(A, 100), (B, 200), (CONFIG, 10)]
    assert store.missing(remote, held={A}) == [(B, 200), (CONFIG, 10)]
    blob = store.layout.blob(CONFIG)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"{}")
    assert store.missing(remote, held={A, B}) == []
    # A config not read: no diff_ids, so nothing can be known to be held.
    assert _remote(()).layer_ids() == [(A, None), (B, None)]


def test_a_spool_holds_layer_blobs_only_when_they_fit_in_ram(tmp_path: Path) -> None:
    assert spool_for(tmp_path, 1 << 20) == tmp_path / "spool"
    assert spool_for(tmp_path, 0) is None  # nothing to fetch
    assert spool_for(tmp_path, 1 << 50) is None  # more than any RAM here
    assert spool_for(tmp_path / "missing", 1 << 20) is None


def test_a_blob_is_read_from_the_spool_when_the_store_lacks_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = LayerStore(tmp_path / "store", spool)
    spool.mkdir()
    (spool / A.removeprefix("sha256:")).write_bytes(b"layer")
    assert store.layout.blob(A) == spool / A.removeprefix("sha256:")
    assert store.has(A) and not store.has(B)
    assert store.missing(_remote()) == [(B, 200), (CONFIG, 10)]
    kept = tmp_path / "store/blobs/sha256" / A.removeprefix("sha256:")
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"layer")
    assert store.layout.blob(A) == kept  # the store's own copy first
    assert LayerStore(tmp_path / "store").layout.blob(B).parent == kept.parent
