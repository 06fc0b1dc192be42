"""Upgrade planning, boot-assessment variables, layer store bookkeeping, snapshot dirs."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from cos.actions.assess import assess
from cos.boot import assessment, grubenv
from cos.config import Config
from cos.data import data_path
from cos.errors import StateError
from cos.oci.store import LayerStore
from cos.snapshot.loop import LoopSnapshotter, estimate_image_bytes
from cos.snapshot.retention import plan_snapshots
from cos.system.installed import Installed
from cos.system.state import InstallState, SnapshotterState


class TestPlan:
    def test_keeps_the_running_one_and_drops_the_oldest(self) -> None:
        p = plan_snapshots([1, 2], active=2, booted=2, max_snaps=2)
        assert (p.fallback, p.keep, p.drop) == (2, [2], [1])

    def test_upgrade_from_passive_falls_back_to_the_booted_passive(self) -> None:
        p = plan_snapshots([1, 2], active=1, booted=2, max_snaps=2)
        assert (p.fallback, p.keep, p.drop) == (2, [2], [1])

    def test_more_snaps_keep_the_newest(self) -> None:
        p = plan_snapshots([1, 2, 3, 4], active=3, booted=3, max_snaps=3)
        assert (p.fallback, p.keep, p.drop) == (3, [3, 4], [1, 2])

    def test_one_snap_still_keeps_what_runs(self) -> None:
        p = plan_snapshots([5], active=5, booted=5, max_snaps=1)
        assert p.keep == [5] and p.drop == []

    def test_unknown_booted_falls_back_to_active(self) -> None:
        p = plan_snapshots([1, 2], active=2, booted=None, max_snaps=2)
        assert (p.fallback, p.keep, p.drop) == (2, [2], [1])


class TestAssessmentEnv:
    def test_trial_round_trip_keeps_user_variables(self, tmp_path: Path) -> None:
        grubenv.write(tmp_path / "grubenv", {"next_entry": "recovery", "passive_snaps": "1"})
        assessment.start_trial(tmp_path, 4, 3, attempts=3, passive=[3, 1, 3])
        env = grubenv.read(tmp_path / "grubenv")
        assert env["next_entry"] == "recovery"
        assert (env["cos_trial"], env["cos_tries"], env["cos_fallback"]) == ("4", "3", "3")
        assert env["passive_snaps"] == "3 1"  # newest first, once each
        assert assessment.read_trial(tmp_path) == assessment.Trial(4, 3, 3)
        assessment.end_trial(tmp_path, [4, 3])
        env = grubenv.read(tmp_path / "grubenv")
        assert "cos_trial" not in env and "cos_tries" not in env and "cos_fallback" not in env
        assert env["passive_snaps"] == "4 3" and env["next_entry"] == "recovery"

    def test_attempts_are_clamped_to_what_grub_counts(self, tmp_path: Path) -> None:
        assessment.start_trial(tmp_path, 2, 1, attempts=50, passive=[1])
        assert assessment.read_trial(tmp_path).tries_left == assessment.MAX_ATTEMPTS  # type: ignore[union-attr]

    def test_grub_cfg_counts_down_every_allowed_attempt(self) -> None:
        cfg = data_path("grub", "grub.cfg").read_text()
        for n in range(1, assessment.MAX_ATTEMPTS + 1):
            assert f'[ "${{cos_tries}}" = "{n}" ]; then set cos_left={n - 1}' in cfg
        assert 'save_env -f "(${oem_blk})${env_file}" cos_tries' in cfg

    @pytest.mark.parametrize(
        ("tries", "mode", "booted", "expected"),
        [
            (0, "passive", 1, True),
            (1, "passive", 1, False),  # a passive boot chosen by hand during the trial
            (0, "active", 2, False),
            (0, "passive", 2, False),
            (0, "recovery", None, False),
        ],
    )
    def test_fell_back(self, tries: int, mode: str, booted: int | None, expected: bool) -> None:
        trial = assessment.Trial(2, tries, 1)
        assert assessment.fell_back(trial, mode, booted) is expected


def _device(tmp_path: Path, mode: str, booted: int | None) -> Installed:
    inst = Installed(tmp_path / "state", tmp_path / "oem", tmp_path / "run")
    for d in (inst.state_dir / ".snapshots", inst.oem_dir, inst.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    for n in (1, 2):
        (inst.state_dir / f".snapshots/{n}").mkdir(exist_ok=True)
        (inst.state_dir / f".snapshots/{n}/snapshot.img").write_bytes(b"x")
    (inst.run_dir / f"{mode}_mode").touch()
    (inst.run_dir / "image").write_text(f".snapshots/{booted}/snapshot.img" if booted else "")
    return inst


class TestAssess:
    def test_no_trial_nothing_to_do(self, tmp_path: Path) -> None:
        inst = _device(tmp_path, "active", 1)
        assert assess(Config(), True, inst) == "none"

    def test_trial_that_never_switched_is_cleared(self, tmp_path: Path) -> None:
        inst = _device(tmp_path, "active", 1)
        os.symlink("1/snapshot.img", inst.state_dir / ".snapshots/active")
        assessment.start_trial(inst.oem_dir, 2, 1, 3, [1])  # crash before the switch
        assert assess(Config(), False, inst) == "none"
        assert assessment.read_trial(inst.oem_dir) is None
        assert assessment.passive_list(inst.oem_dir) == [2]

    def test_failing_check_keeps_the_trial(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        inst = _device(tmp_path, "active", 2)
        os.symlink("2/snapshot.img", inst.state_dir / ".snapshots/active")
        assessment.start_trial(inst.oem_dir, 2, 1, 3, [1])
        checks = tmp_path / "checks"
        checks.mkdir()
        (checks / "10-fails").write_text("#!/bin/sh\necho nope >&2\nexit 3\n")
        (checks / "10-fails").chmod(0o755)
        monkeypatch.setattr("cos.actions.assess.CHECKS_DIR", checks)
        assert assess(Config(), True, inst) == "checks-failed"
        assert assessment.read_trial(inst.oem_dir) == assessment.Trial(2, 3, 1)
        assert assess(Config(), False, inst) == "pending"


class TestTrialDeadline:
    def test_an_unconfirmed_trial_is_rebooted_when_its_time_is_up(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        inst = _device(tmp_path, "active", 2)
        os.symlink("2/snapshot.img", inst.state_dir / ".snapshots/active")
        assessment.start_trial(inst.oem_dir, 2, 1, 3, [1])
        ran: list[list[str]] = []
        monkeypatch.setattr("cos.run.run", lambda argv, **kw: ran.append(argv))
        assert assess(Config(), installed=inst, deadline=True) == "rebooting"
        assert ran == [["systemctl", "reboot", "--force"]]
        # The trial stays: GRUB counts the try and falls back when none are left.
        assert assessment.read_trial(inst.oem_dir) == assessment.Trial(2, 3, 1)

    def test_a_confirmed_trial_is_left_alone_by_the_deadline(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        inst = _device(tmp_path, "active", 2)
        os.symlink("2/snapshot.img", inst.state_dir / ".snapshots/active")
        ran: list[list[str]] = []
        monkeypatch.setattr("cos.run.run", lambda argv, **kw: ran.append(argv))
        assert assess(Config(), installed=inst, deadline=True) == "none"  # no trial
        assert ran == []

    def test_the_deadline_is_armed_only_on_the_running_system(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        inst = _device(tmp_path, "active", 2)
        os.symlink("2/snapshot.img", inst.state_dir / ".snapshots/active")
        assessment.start_trial(inst.oem_dir, 2, 1, 3, [1])
        ran: list[list[str]] = []
        monkeypatch.setattr("cos.run.run", lambda argv, **kw: ran.append(argv))
        assert assess(Config(), installed=inst) == "pending"
        assert ran == []  # a device mounted elsewhere is not this boot
        monkeypatch.setattr("cos.actions.assess.RUN_DIR", inst.run_dir)
        monkeypatch.setattr("cos.actions.assess.SYSTEMD_RUN_DIR", tmp_path)
        assert assess(Config(trial_timeout=90), installed=inst) == "pending"
        assert ran[0][:3] == ["systemd-run", "--on-active=90", "--unit=cos-trial-deadline"]
        assert ran[0][-3:] == ["/usr/bin/cos", "boot-assessment", "--deadline"]
        ran.clear()
        assert assess(Config(trial_timeout=0), installed=inst) == "pending"
        assert ran == []


class TestStore:
    def _blob(self, store: LayerStore, data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        p = store.path / "blobs/sha256" / d.split(":")[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return d

    def test_tar_size_from_the_gzip_trailer_and_gc(self, tmp_path: Path) -> None:
        store = LayerStore(tmp_path / ".store")
        raw = os.urandom(1000) + bytes(300_000)
        layer = self._blob(store, gzip.compress(raw))
        other = self._blob(store, gzip.compress(b"other layer"))
        cfg = self._blob(store, b"{}")
        manifest = self._blob(
            store,
            json.dumps(
                {"config": {"digest": cfg, "size": 2}, "layers": [{"digest": layer, "size": 1}]}
            ).encode(),
        )
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "digest": manifest,
                    "annotations": {"org.opencontainers.image.ref.name": "snapshot-1"},
                }
            ],
        }
        (store.path / "index.json").write_text(json.dumps(index))
        assert store.unpacked_size("snapshot-1") == len(raw)
        assert store.layers("snapshot-1") == [layer]
        freed = store.keep_only({"snapshot-1"})
        assert freed > 0 and not store.has(other) and store.has(layer) and store.has(cfg)
        store.keep_only(set())
        assert store.tags() == {} and not store.has(layer)

    def test_damaged_index_is_a_clear_error(self, tmp_path: Path) -> None:
        store = LayerStore(tmp_path)
        (tmp_path / "index.json").write_text("{not json")
        with pytest.raises(Exception, match="damaged"):
            store.tags()


class TestSnapshotDirs:
    def test_numbers_debris_switch_delete(self, tmp_path: Path) -> None:
        snaps = LoopSnapshotter(tmp_path)
        for n in (1, 2, 3):
            (snaps.root / str(n)).mkdir(parents=True)
            (snaps.root / f"{n}/snapshot.img").write_bytes(b"img")
        (snaps.root / "3/.partial").touch()
        (snaps.root / "4").mkdir()  # crashed before the image existed
        state = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
        oem = tmp_path / "oem"
        oem.mkdir()
        snaps.activate(1, state=state, oem_dir=oem, reason="test", passive=[2])
        assert snaps.numbers() == [1, 2] and snaps.active() == 1
        assert snaps.next_number() == 5
        assert sorted(snaps.clean_debris()) == [3, 4]
        with pytest.raises(StateError):
            snaps.activate(3, state=state, oem_dir=oem, reason="test", passive=[])
        with pytest.raises(StateError):
            snaps.delete(1)
        snaps.delete(2)
        assert snaps.numbers() == [1]

    def test_estimate_grows_with_the_tree(self) -> None:
        assert estimate_image_bytes(0) >= 64 * 1024 * 1024
        assert estimate_image_bytes(1 << 30) > (1 << 30) * 1.2


def test_state_history_round_trip_and_limit() -> None:
    from cos.system.state import HISTORY_LIMIT, ImageState, InstallState

    img = ImageState("r/e:1", "sha256:ab", "COS_SNAP1", "ext4", "d", "upgrade")
    st = InstallState(date="d", snapshotter=SnapshotterState(), labels={})
    for i in range(HISTORY_LIMIT + 5):
        st.record("upgrade", i, img)
    st.record("upgrade-recovery", None, None)
    back = InstallState.from_yaml(st.to_yaml())
    assert len(back.history) == HISTORY_LIMIT
    assert back.history[-2].snapshot == HISTORY_LIMIT + 4
    assert back.history[-2].digest == "sha256:ab"
    assert back.history[-1].action == "upgrade-recovery" and back.history[-1].snapshot is None
    assert "snapshot" not in back.history[-1].to_dict()
    # A state.yaml without history (older toolkit) still reads.
    old = st.to_yaml().split("history:")[0]
    assert InstallState.from_yaml(old).history == []
