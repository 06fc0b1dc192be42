"""Damaged state is refused before anything is written, with a repair hint; status
reports it instead of failing."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cos.actions.assess import assess
from cos.actions.rollback import RollbackRequest, rollback
from cos.actions.status import collect, render
from cos.actions.upgrade import UpgradeRequest, upgrade
from cos.boot import assessment, grubenv
from cos.config import Config
from cos.errors import CosError, StateError
from cos.snapshot.base import SNAPSHOTS_DIR
from cos.system.installed import Installed
from cos.system.state import (
    Assessment,
    ImageState,
    InstallState,
    SnapshotterState,
    read_state,
    write_state,
)


def _installed(tmp_path: Path, booted: int = 1) -> Installed:
    """A healthy installation: snapshots 1 (active) and 2, state.yaml, grubenv."""
    inst = Installed(tmp_path / "state", tmp_path / "oem", tmp_path / "run")
    for d in (inst.state_dir / SNAPSHOTS_DIR, inst.oem_dir, inst.run_dir):
        d.mkdir(parents=True)
    for n in (1, 2):
        (inst.state_dir / f"{SNAPSHOTS_DIR}/{n}").mkdir()
        (inst.state_dir / f"{SNAPSHOTS_DIR}/{n}/snapshot.img").write_bytes(b"img")
    os.symlink("1/snapshot.img", inst.state_dir / f"{SNAPSHOTS_DIR}/active")
    state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    write_state(inst.state_dir, state)
    grubenv.write(assessment.env_path(inst.oem_dir), {assessment.PASSIVE: "2"})
    (inst.run_dir / "active_mode").touch()
    (inst.run_dir / "image").write_text(f"{SNAPSHOTS_DIR}/{booted}/snapshot.img")
    return inst


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under root with its content (files) or target (links)."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_file():
            out[key] = p.read_bytes()
        else:
            out[key] = "dir"
    return out


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"just a string\n",
        b"- a\n- list\n",
        b"\xff\xfe not utf-8",
        b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        b"date: d\n",  # no labels, no snapshots
    ],
    ids=["empty", "scalar", "list", "non-utf8", "deep", "partial"],
)
def test_a_damaged_state_yaml_is_refused_with_a_repair_hint(tmp_path: Path, content: bytes) -> None:
    inst = _installed(tmp_path)
    (inst.state_dir / "state.yaml").write_bytes(content)
    before = _tree(tmp_path)
    with pytest.raises(StateError) as err:
        read_state(inst.state_dir)
    assert "not a valid cos state file" in err.value.message
    assert "\n" not in err.value.message and "cos reset" in err.value.hint
    # An upgrade stops there: nothing written, the running snapshot's blobs untouched.
    with pytest.raises(StateError):
        upgrade(UpgradeRequest(system="127.0.0.1:9/x:y", installed=inst), Config())
    assert _tree(tmp_path) == before
    # status explains the damage instead of failing.
    text = render(collect(Config(), inst))
    assert "DAMAGED:" in text and "repair:" in text


def _break_active(inst: Installed) -> None:
    link = inst.state_dir / f"{SNAPSHOTS_DIR}/active"
    link.unlink()
    link.mkdir()


def _symlinked_snapshot(inst: Installed) -> None:
    snaps = inst.state_dir / SNAPSHOTS_DIR
    os.rename(snaps / "2", inst.state_dir / "elsewhere")
    os.symlink(inst.state_dir / "elsewhere", snaps / "2")


def _grubenv_dir(inst: Installed) -> None:
    env = assessment.env_path(inst.oem_dir)
    env.unlink()
    env.mkdir()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_break_active, "active is not a link"),
        (_symlinked_snapshot, "snapshot 2 is not a directory"),
        (_grubenv_dir, "not a regular file"),
    ],
)
def test_a_damaged_snapshots_dir_or_grubenv_stops_rollback_before_any_write(
    tmp_path: Path, damage: object, words: str
) -> None:
    inst = _installed(tmp_path)
    damage(inst)  # type: ignore[operator]
    before = _tree(tmp_path)
    with pytest.raises(CosError, match=words) as err:
        rollback(RollbackRequest(snapshot=2, installed=inst), Config())
    assert err.value.hint
    assert _tree(tmp_path) == before
    assert words in render(collect(Config(), inst))


def test_non_ascii_digits_are_not_snapshot_numbers(tmp_path: Path) -> None:
    inst = _installed(tmp_path)
    (
        inst.state_dir / f"{SNAPSHOTS_DIR}/\u0661\u0662"
    ).mkdir()  # Arabic-Indic digits: isdigit() is true
    (inst.run_dir / "image").write_text(f"{SNAPSHOTS_DIR}/²/snapshot.img")
    grubenv.write(
        assessment.env_path(inst.oem_dir),
        {assessment.PASSIVE: "2 \u00b3", assessment.TRIAL: "\u0661", assessment.TRIES: "2"},
    )
    assert inst.booted_snapshot() is None
    assert assessment.read_trial(inst.oem_dir) is None
    assert assessment.passive_list(inst.oem_dir) == [2]
    assert assess(Config(), False, inst) == "none"  # boot assessment runs at every boot


def test_rollback_to_a_snapshot_that_never_confirmed_a_boot_puts_it_on_trial(
    tmp_path: Path,
) -> None:
    inst = _installed(tmp_path)
    state = read_state(inst.state_dir)
    assert state is not None
    for n in (1, 2):
        state.snapshots[n] = ImageState(
            source="r/e:1", digest=f"sha256:{n}", label=f"COS_SNAP{n}", fs="ext4", date="d",
            from_action="upgrade", active=n == 1,
            boot_assessment=Assessment.TRIAL if n == 2 else Assessment.GOOD,
        )  # fmt: skip
    write_state(inst.state_dir, state)
    rollback(RollbackRequest(snapshot=2, installed=inst), Config(boot_attempts=2))
    assert assessment.read_trial(inst.oem_dir) == assessment.Trial(2, 2, 1)
    # Back to a confirmed snapshot: no trial.
    rollback(RollbackRequest(snapshot=1, installed=inst), Config())
    assert assessment.read_trial(inst.oem_dir) is None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    state=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
    env=st.one_of(st.binary(max_size=1100), st.just(b"")),
)
def test_mutated_state_and_grubenv_give_clean_errors_and_no_writes(
    tmp_path_factory: pytest.TempPathFactory, state: bytes, env: bytes
) -> None:
    """status, rollback and boot assessment over random state.yaml and grubenv contents:
    a result or one CosError, never another exception; a refusal writes nothing."""
    inst = _installed(tmp_path_factory.mktemp("robust"))
    (inst.state_dir / "state.yaml").write_bytes(state)
    if env:
        assessment.env_path(inst.oem_dir).write_bytes(env)
    root = inst.state_dir.parent
    render(collect(Config(), inst))  # status explains, never fails on damage
    before = _tree(root)
    try:
        rollback(RollbackRequest(snapshot=2, installed=inst), Config())
    except CosError:
        assert _tree(root) == before
    with contextlib.suppress(CosError):
        assess(Config(), installed=inst)
