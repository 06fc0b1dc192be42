"""Staged upgrades: state.yaml's record, what menus and rollback see, the switch of
`cos upgrade --apply` and its refusals, crash by crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cos import events
from cos.actions import upgrade as action
from cos.actions.assess import assess
from cos.actions.rollback import RollbackRequest, rollback
from cos.actions.status import collect, render
from cos.actions.upgrade import UpgradeRequest
from cos.boot import assessment, grubenv
from cos.cli import main
from cos.config import Config, SnapshotterKind
from cos.errors import ExitCode, StateError
from cos.oci.reference import parse_ref
from cos.oci.store import RemoteImage
from cos.snapshot import BACKENDS, base, open_snapshotter
from cos.snapshot.base import SNAPSHOTS_DIR
from cos.snapshot.loop import LoopSnapshotter
from cos.system.installed import Installed
from cos.system.state import (
    Assessment,
    ImageState,
    InstallState,
    SnapshotterState,
    Staged,
    read_state,
    write_state,
)
from tests.unit.test_damage import _tree

SOURCE = "127.0.0.1:5000/os:v3"
DIGEST = "sha256:" + "3" * 64


class Crash(BaseException):
    """A power cut: no handler runs after it."""


def _image(n: int, digest: str = "", assessed: Assessment = Assessment.GOOD) -> ImageState:
    return ImageState(
        source=SOURCE, digest=digest or f"sha256:{n:064d}", label=f"COS_SNAP{n}", fs="ext4",
        date="d", from_action="upgrade", boot_assessment=assessed,
    )  # fmt: skip


def _installed(tmp_path: Path) -> Installed:
    """Snapshot 1 active and booted, 2 passive, 3 staged (complete, in no menu)."""
    inst = Installed(tmp_path / "state", tmp_path / "oem", tmp_path / "run")
    for d in (inst.state_dir / SNAPSHOTS_DIR, inst.oem_dir, inst.run_dir):
        d.mkdir(parents=True)
    for n in (1, 2, 3):
        (inst.state_dir / f"{SNAPSHOTS_DIR}/{n}").mkdir()
        (inst.state_dir / f"{SNAPSHOTS_DIR}/{n}/snapshot.img").write_bytes(b"img")
    os.symlink("1/snapshot.img", inst.state_dir / f"{SNAPSHOTS_DIR}/active")
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    state.snapshots = {1: _image(1), 2: _image(2)}
    state.snapshots[1].active = True
    state.staged = Staged(3, _image(3, DIGEST, Assessment.NONE))
    write_state(inst.state_dir, state)
    grubenv.write(assessment.env_path(inst.oem_dir), {assessment.PASSIVE: "2"})
    (inst.run_dir / "active_mode").touch()
    (inst.run_dir / "image").write_text(f"{SNAPSHOTS_DIR}/1/snapshot.img")
    return inst


def _state(inst: Installed) -> InstallState:
    state = read_state(inst.state_dir)
    assert state is not None
    return state


def _snaps(inst: Installed) -> LoopSnapshotter:
    snaps = open_snapshotter(inst.state_dir, _state(inst), Config().snapshot_fs)
    assert isinstance(snaps, LoopSnapshotter)
    return snaps


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    ran: list[str] = []
    monkeypatch.setattr(action, "run_hook", lambda name, sources, root=None: ran.append(name))
    return ran


def _registry_serves(monkeypatch: pytest.MonkeyPatch, digest: str) -> None:
    def read(ref: object, cfg: Config) -> RemoteImage:
        return RemoteImage(parse_ref(SOURCE), digest, (), ("sha256:" + "c" * 64, 1))

    monkeypatch.setattr(action, "_read", read)


# -- the record --------------------------------------------------------------------------


def test_state_yaml_keeps_the_staged_record_and_reads_older_files() -> None:
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    assert "staged" not in state.to_yaml()
    state.staged = Staged(3, _image(3, DIGEST))
    text = state.to_yaml()
    assert "staged:\n  snapshot: 3\n  source: " in text
    again = InstallState.from_yaml(text)
    assert again.staged == state.staged and again.held() == {3}
    # A newer toolkit's keys in the record are left out; a record without a number is damage.
    assert InstallState.from_yaml(text.replace("  snapshot: 3\n", "  snapshot: 3\n  new: 1\n"))
    with pytest.raises(StateError):
        InstallState.from_yaml(text.replace("  snapshot: 3\n", ""))


def test_a_record_whose_snapshot_is_missing_or_active_stages_nothing(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    snaps, state = _snaps(inst), _state(inst)
    assert snaps.staged(state) == state.staged and snaps.bootable(state) == [1, 2]
    os.rename(inst.state_dir / f"{SNAPSHOTS_DIR}/3", tmp_path / "gone")
    assert snaps.staged(state) is None and snaps.bootable(state) == [1, 2]
    os.rename(tmp_path / "gone", inst.state_dir / f"{SNAPSHOTS_DIR}/3")
    (inst.state_dir / f"{SNAPSHOTS_DIR}/3/.partial").touch()  # a build cut short
    assert snaps.staged(state) is None
    (inst.state_dir / f"{SNAPSHOTS_DIR}/3/.partial").unlink()
    snaps._link(3)  # a switch cut short after the link
    assert snaps.staged(state) is None and snaps.bootable(state) == [1, 2, 3]


# -- never bootable by accident ------------------------------------------------------------


def test_rollback_never_picks_the_staged_snapshot(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(StateError, match="staged") as err:
        rollback(RollbackRequest(snapshot=3, installed=inst), Config())
    assert "--apply" in err.value.hint and _tree(tmp_path) == before
    assert rollback(RollbackRequest(installed=inst), Config()) == 2  # the newest other
    assert assessment.passive_list(inst.oem_dir) == [1]
    assert _state(inst).staged == Staged(3, _image(3, DIGEST, Assessment.NONE))


def test_a_fallback_and_a_cleared_trial_leave_it_out_of_the_menu(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    snaps = _snaps(inst)
    snaps._link(2)
    assessment.start_trial(inst.oem_dir, 2, 1, 3, [1])
    grubenv.update(assessment.env_path(inst.oem_dir), {assessment.TRIES: "0"})
    (inst.run_dir / "active_mode").unlink()
    (inst.run_dir / "passive_mode").touch()
    assert assess(Config(), installed=inst) == "fallback"
    assert snaps.active() == 1 and assessment.passive_list(inst.oem_dir) == [2]
    # A trial that never switched is cleared with a menu of what may boot.
    assessment.start_trial(inst.oem_dir, 3, 1, 3, [2])
    assert assess(Config(), installed=inst) == "none"
    assert assessment.passive_list(inst.oem_dir) == [2]


def test_status_shows_it_staged_and_not_among_the_snapshots(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    data = collect(Config(), inst)
    assert data["staged"] == {
        "snapshot": 3, "source": SOURCE, "digest": DIGEST, "date": "d", "image": None,
    }  # fmt: skip
    assert [s["number"] for s in data["snapshots"]] == [1, 2]
    assert "Staged:    snapshot 3  127.0.0.1:5000/os:v3" in render(data)
    (inst.state_dir / f"{SNAPSHOTS_DIR}/3/snapshot.img").unlink()
    assert collect(Config(), inst)["staged"] is None


# -- --apply ------------------------------------------------------------------------------


def test_apply_switches_on_trial_and_runs_only_the_switch_hook(
    tmp_path: Path, hooks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = _installed(tmp_path)
    _registry_serves(monkeypatch, DIGEST)
    assert action.apply(UpgradeRequest(installed=inst), Config(boot_attempts=2)) == 3
    snaps, state = _snaps(inst), _state(inst)
    assert snaps.active() == 3 and state.staged is None
    assert assessment.read_trial(inst.oem_dir) == assessment.Trial(3, 2, 1)
    assert assessment.passive_list(inst.oem_dir) == [1]
    assert snaps.numbers() == [1, 3]  # max-snaps 2: the oldest other went after the switch
    assert state.snapshots[3].boot_assessment == Assessment.TRIAL and state.snapshots[3].active
    assert (state.history[-1].action, state.history[-1].snapshot) == ("upgrade", 3)
    assert hooks == ["after-upgrade"]


def test_apply_refuses_when_nothing_is_staged(tmp_path: Path, hooks: list[str]) -> None:
    inst = _installed(tmp_path)
    state = _state(inst)
    state.staged = None
    write_state(inst.state_dir, state)
    before = _tree(tmp_path)
    with pytest.raises(StateError, match="no snapshot is staged") as err:
        action.apply(UpgradeRequest(installed=inst, offline=True), Config())
    assert "--download-only" in err.value.hint
    assert _tree(tmp_path) == before and hooks == []


def test_apply_refuses_a_digest_the_registry_no_longer_serves(
    tmp_path: Path, hooks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = _installed(tmp_path)
    _registry_serves(monkeypatch, "sha256:" + "4" * 64)
    before = _tree(tmp_path)
    with pytest.raises(StateError, match="snapshot 3 was staged from") as err:
        action.apply(UpgradeRequest(installed=inst), Config())
    assert "--force" in err.value.hint and "--offline" in err.value.hint
    assert _tree(tmp_path) == before and hooks == []
    # --force applies what was staged, as --offline does without asking.
    assert action.apply(UpgradeRequest(installed=inst, force=True), Config()) == 3
    assert _state(inst).snapshots[3].digest == DIGEST


WRITES = ["state listed", "menu and trial", "link", "state active"]


@pytest.mark.parametrize("cut", range(len(WRITES)), ids=WRITES)
def test_apply_cut_at_any_write_boots_the_old_or_the_new_snapshot(
    tmp_path: Path, hooks: list[str], monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """A power cut before write `cut` of the switch: what boots is 1 or the complete 3;
    before the link, 3 is still staged (in no menu) and --apply completes it."""
    inst = _installed(tmp_path)
    done = [0]

    def counted(real: object) -> object:
        def write(*args: object, **kw: object) -> object:
            if done[0] == cut:
                raise Crash
            done[0] += 1
            return real(*args, **kw)  # type: ignore[operator]

        return write

    monkeypatch.setattr(base, "write_state", counted(base.write_state))
    monkeypatch.setattr(assessment, "start_trial", counted(assessment.start_trial))
    monkeypatch.setattr(LoopSnapshotter, "_link", counted(LoopSnapshotter._link))
    monkeypatch.setattr(action, "_abandon", lambda *a: None)  # a power cut runs no handler
    with pytest.raises(Crash):
        action.apply(UpgradeRequest(installed=inst, offline=True), Config())
    monkeypatch.undo()
    assert done[0] == cut
    snaps, state = _snaps(inst), _state(inst)
    assert snaps.active() == (3 if WRITES[cut] == "state active" else 1)
    assert 3 not in assessment.passive_list(inst.oem_dir)
    if snaps.active() == 1:
        assert snaps.staged(state) == Staged(3, _image(3, DIGEST, Assessment.NONE))
        assert 3 not in snaps.bootable(state)
        assert assess(Config(), installed=inst) == "none"  # the next boot clears any trial
        assert 3 not in assessment.passive_list(inst.oem_dir)
        assert assessment.read_trial(inst.oem_dir) is None
        assert action.apply(UpgradeRequest(installed=inst, offline=True), Config()) == 3
    assert snaps.active() == 3 and 3 not in assessment.passive_list(inst.oem_dir)
    assert (inst.state_dir / f"{SNAPSHOTS_DIR}/3/snapshot.img").is_file()
    assert snaps.staged(_state(inst)) is None
    assert [s["number"] for s in collect(Config(), inst)["snapshots"] if s["active"]] == [3]


def test_a_new_build_drops_the_staged_snapshot_before_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = _installed(tmp_path)
    up = action._open(UpgradeRequest(installed=inst), Config(), move=False)

    def cut(*args: object) -> None:
        raise Crash

    monkeypatch.setattr(action, "write_state", cut)
    with pytest.raises(Crash):
        action._drop_staged(up)
    monkeypatch.undo()
    # Cut between the two: the snapshot is gone, the record left stages nothing.
    state = _state(inst)
    assert state.staged is not None and _snaps(inst).staged(state) is None
    assert _snaps(inst).numbers() == [1, 2]
    up = action._open(UpgradeRequest(installed=inst), Config(), move=False)
    action._drop_staged(up)
    assert _state(inst).staged is None


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--check", "--apply"], "not allowed with argument"),
        (["--offline"], "--offline does not go with a full upgrade"),
        (["--download-only", "--offline"], "--offline does not go with --download-only"),
        (["--apply", "--system", "x/y:1"], "--system does not go with --apply"),
        (["--check", "--reboot"], "--reboot does not go with --check"),
        (["--download-only", "--bootloader"], "--bootloader does not go with --download-only"),
        (["--recovery", "--check"], "--recovery does not go with --check"),
    ],
)
def test_flags_that_do_not_go_together(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    assert main(["upgrade", *argv]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert words in err and "hint: " in err


@pytest.mark.parametrize("available", [True, False])
def test_check_exits_0_with_an_update_and_9_without(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, available: bool
) -> None:
    seen: list[UpgradeRequest] = []

    def check(req: UpgradeRequest, cfg: Config) -> bool:
        seen.append(req)
        events.summary(available=available)
        return available

    monkeypatch.setattr(action, "check", check)
    out = tmp_path / "events"
    with out.open("w") as stream:
        monkeypatch.setattr("sys.stdout", stream)
        rc = main(["upgrade", "--check", "--json", "--system", "x/y:1", "--state-dir", "/s"])
    assert rc == (ExitCode.OK if available else ExitCode.NO_UPDATE) == (0 if available else 9)
    assert seen[0].system == "x/y:1" and not seen[0].download_only
    last = out.read_text().splitlines()[-1]
    assert f'"available":{str(available).lower()}' in last and f'"exit_code":{rc}' in last
    assert '"check":true' in out.read_text().splitlines()[0]


def test_download_only_does_not_stage_a_move_to_another_backend(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(StateError, match="moves to layers snapshots") as err:
        action.upgrade(
            UpgradeRequest(system=SOURCE, download_only=True, installed=inst),
            Config(snapshotter=SnapshotterKind.LAYERS),
        )
    assert "full `cos upgrade`" in err.value.hint and _tree(tmp_path) == before


@pytest.mark.parametrize("kind", list(SnapshotterKind))
def test_only_incomplete_snapshots_are_debris(tmp_path: Path, kind: SnapshotterKind) -> None:
    """What the next build clears: never a complete snapshot that is not active (a
    staged one, a passive one), whatever the backend stores it as."""
    snaps = BACKENDS[kind](tmp_path)
    complete = {1: "snapshot.img", 2: "snapshot.img"}
    if kind == SnapshotterKind.LAYERS:
        complete[3] = "layers"
    for n, name in complete.items():
        (snaps.root / str(n)).mkdir(parents=True)
        (snaps.root / str(n) / name).write_text("3/top.erofs\n" if name == "layers" else "img")
    for n in (4, 5):
        (snaps.root / str(n)).mkdir()
    (snaps.root / "4/snapshot.img").write_text("img")
    (snaps.root / "4/.partial").touch()
    snaps._link(1)
    assert sorted(snaps.clean_debris()) == [4, 5]
    assert snaps.numbers() == sorted(complete)


def test_a_system_without_mkfs_erofs_stays_on_its_snapshotter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Layers is the default; a loop system moves with its next upgrade only when it can
    write layer images: an older image lacking mkfs.erofs goes on upgrading as loop."""
    monkeypatch.setattr(action.runner, "which", lambda tool: None)
    assert action._wanted(Config(), move=True) is None
    monkeypatch.setattr(action.runner, "which", lambda tool: f"/usr/bin/{tool}")
    assert action._wanted(Config(), move=True) == SnapshotterKind.LAYERS
    loop = Config(snapshotter=SnapshotterKind.LOOP)
    assert action._wanted(loop, move=True) == SnapshotterKind.LOOP
    assert action._wanted(Config(), move=False) is None
