"""The layer store's view of what a pull must fetch, given what the snapshotter holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cos.oci.reference import parse_ref
from cos.oci.store import LayerStore, RemoteImage
from cos.snapshot.layers import LayersSnapshotter
from cos.snapshot.loop import LoopSnapshotter

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


def test_transient_layer_blobs_are_not_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LayerStore(tmp_path / "store")
    for digest in (A, B, CONFIG):
        blob = store.layout.blob(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"x")
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store.sync(skip={A, B})  # what a pull for a backend that keeps no blobs does
    names = {Path(p).name for p in synced}
    assert CONFIG[7:] in names and A[7:] not in names and B[7:] not in names
    synced.clear()
    store.sync()
    assert {A[7:], B[7:], CONFIG[7:]} <= {Path(p).name for p in synced}
    # The backends: layer images need no blob once built; loop snapshots keep them.
    assert not LayersSnapshotter.keeps_blobs and LoopSnapshotter.keeps_blobs
