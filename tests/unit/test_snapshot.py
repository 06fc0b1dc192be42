"""The one switch (Snapshotter.activate): its order of writes, crash by crash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cos.boot import assessment
from cos.config import Config
from cos.oci.layout import LayerBlob
from cos.oci.store import LayerStore
from cos.snapshot import BACKENDS, new_snapshotter, open_snapshotter
from cos.snapshot.base import Trial
from cos.snapshot.layers import LayersSnapshotter, _unpack_dir
from cos.snapshot.loop import LoopSnapshotter
from cos.system.state import (
    ImageState,
    InstallState,
    SnapshotterKind,
    SnapshotterState,
    read_state,
    write_state,
)


class Crash(Exception):
    pass


def _image(n: int) -> ImageState:
    return ImageState(
        source=f"r/e:{n}", digest=f"sha256:{n}", label=f"COS_SNAP{n}", fs="ext4", date="d",
        from_action="upgrade",
    )  # fmt: skip


def _system(tmp_path: Path) -> tuple[LoopSnapshotter, InstallState, Path]:
    """Snapshots 1 (active) and 2 (built, not yet switched to)."""
    snaps = LoopSnapshotter(tmp_path / "state")
    for n in (1, 2):
        (snaps.root / str(n)).mkdir(parents=True)
        (snaps.image(n)).write_bytes(b"img")
    oem = tmp_path / "oem"
    oem.mkdir()
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    snaps.activate(1, state=state, oem_dir=oem, reason="install", passive=[], image=_image(1))
    return snaps, state, oem


def _upgrade(snaps: LoopSnapshotter, state: InstallState, oem: Path) -> None:
    snaps.activate(
        2,
        state=state,
        oem_dir=oem,
        reason="upgrade",
        passive=[1],
        image=_image(2),
        trial=Trial(fallback=1, attempts=3),
    )


def test_an_upgrade_switch_writes_state_menu_link_state(tmp_path: Path) -> None:
    snaps, state, oem = _system(tmp_path)
    _upgrade(snaps, state, oem)
    assert snaps.active() == 2
    assert assessment.read_trial(oem) == assessment.Trial(2, 3, 1)
    assert assessment.passive_list(oem) == [1]
    on_disk = read_state(snaps.state)
    assert on_disk is not None and on_disk.active() == 2
    assert [h.action for h in on_disk.history] == ["install", "upgrade"]


def test_a_crash_before_the_link_boots_the_old_snapshot_with_the_new_one_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snaps, state, oem = _system(tmp_path)

    def crash(n: int) -> None:
        raise Crash

    monkeypatch.setattr(snaps, "_link", crash)
    with pytest.raises(Crash):
        _upgrade(snaps, state, oem)
    assert snaps.active() == 1
    on_disk = read_state(snaps.state)
    assert on_disk is not None and on_disk.active() == 1 and 2 in on_disk.snapshots
    # GRUB already has the trial and its fallback: booting 1 is what the trial falls back to.
    assert assessment.read_trial(oem) == assessment.Trial(2, 3, 1)


def test_a_crash_before_the_menu_leaves_everything_on_the_old_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snaps, state, oem = _system(tmp_path)

    def crash(*args: object, **kw: object) -> None:
        raise Crash

    monkeypatch.setattr(assessment, "start_trial", crash)
    with pytest.raises(Crash):
        _upgrade(snaps, state, oem)
    assert snaps.active() == 1 and assessment.read_trial(oem) is None
    on_disk = read_state(snaps.state)
    assert on_disk is not None and on_disk.active() == 1


def test_a_crash_after_the_link_leaves_state_one_step_behind_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snaps, state, oem = _system(tmp_path)
    writes = []

    def write(directory: Path, st: InstallState) -> None:
        writes.append(st.active())
        if len(writes) == 2:
            raise Crash
        write_state(directory, st)

    monkeypatch.setattr("cos.snapshot.base.write_state", write)
    with pytest.raises(Crash):
        _upgrade(snaps, state, oem)
    assert writes == [1, 2]  # listed while 1 was active, then the crash on the final write
    assert snaps.active() == 2  # the link is the truth; the next action rewrites state.yaml


def test_rollback_needs_a_complete_snapshot(tmp_path: Path) -> None:
    snaps, state, oem = _system(tmp_path)
    (snaps.root / "2/.partial").touch()
    with pytest.raises(Exception, match="does not exist or is incomplete"):
        snaps.activate(2, state=state, oem_dir=oem, reason="rollback", passive=[1])
    assert snaps.active() == 1


def test_backends_come_from_state_yaml(tmp_path: Path) -> None:
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    assert set(BACKENDS) == set(SnapshotterKind)
    assert isinstance(open_snapshotter(tmp_path, state, state.snapshotter.fs), LoopSnapshotter)
    assert isinstance(open_snapshotter(tmp_path, None, state.snapshotter.fs), LoopSnapshotter)
    kind = Config().snapshotter
    assert kind == SnapshotterKind.LAYERS  # new installations share their layers
    assert new_snapshotter(tmp_path, state.snapshotter.fs, kind).kind == kind


def _layer(snaps: LayersSnapshotter, diff_id: str, content: bytes) -> Path:
    snaps.layers_dir.mkdir(parents=True, exist_ok=True)
    image = snaps.layers_dir / f"{diff_id.removeprefix('sha256:')}.erofs"
    image.write_bytes(content)
    meta = {"sha256": hashlib.sha256(content).hexdigest(), "root": None}
    image.with_suffix(".json").write_text(json.dumps(meta))
    return image


def test_an_upgrade_reuses_only_layer_images_that_match_their_sum(tmp_path: Path) -> None:
    snaps = LayersSnapshotter(tmp_path)
    good, bad, absent = ("sha256:" + c * 64 for c in "abc")
    _layer(snaps, good, b"layer a")
    damaged = _layer(snaps, bad, b"layer b")
    damaged.write_bytes(b"layer B")  # bit rot after it was described
    assert snaps.has_layer(good) and snaps.has_layer(bad) and not snaps.has_layer(absent)
    assert snaps.intact_layers([good, bad, absent, None]) == {good}
    # Checked once per run, but a file that changes since is checked again.
    image = _layer(snaps, good, b"layer a")
    assert snaps.intact_layers([good]) == {good}
    image.write_bytes(b"layer A, longer")
    assert snaps.intact_layers([good]) == set()
    # What a new snapshot writes leaves out what is held; loop snapshots hold nothing.
    assert snaps.new_bytes([(good, 10**9)]) < snaps.new_bytes([(absent, 10**9)])
    assert LoopSnapshotter(tmp_path).intact_layers([good]) == set()


def test_a_layer_is_unpacked_in_ram_only_when_its_counted_size_fits(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    small, huge = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    (tmp_path / "store/tar-sizes").mkdir(parents=True)
    (tmp_path / "store/tar-sizes" / ("a" * 64)).write_text(str(1 << 20))
    (tmp_path / "store/tar-sizes" / ("b" * 64)).write_text(str(1 << 50))
    run, state = tmp_path / "run/unpack", tmp_path / "state"
    run.parent.mkdir()

    def blob(digest: str | None) -> LayerBlob:
        return LayerBlob(tmp_path / "blob", "application/vnd.oci.image.layer.v1.tar", "l", digest)

    assert _unpack_dir(store, blob(small), run, state) == run and run.is_dir()
    assert _unpack_dir(store, blob(huge), run, state) == state
    assert _unpack_dir(store, blob("sha256:" + "c" * 64), run, state) == state  # not counted
    assert _unpack_dir(store, blob(None), run, state) == state
