"""The boot trail: one bounded record per boot, the last KEEP kept, read by logs/status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cos.actions.logs import show_logs
from cos.config import Config
from cos.errors import StateError
from cos.system import trail
from cos.system.installed import Installed
from cos.system.trail import StepOutcome, Trail, failures, kept_boots, render_record


def _boot(monkeypatch: pytest.MonkeyPatch, boot_id: str) -> None:
    monkeypatch.setattr(trail, "_boot_id", lambda: boot_id)


def _stage(t: Trail, stage: str, failed: int = 0) -> None:
    steps = [StepOutcome("doc.yaml.0", "ran")] + [
        StepOutcome(f"doc.yaml.{i + 1}", "failed", "commands: false (exit 1)")
        for i in range(failed)
    ]
    t.record_stage(stage, seconds=0.25, documents=["/oem/doc.yaml"], steps=steps, invalid=[])


def test_each_boot_gets_the_next_number_and_stages_accumulate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Trail(tmp_path / "run", tmp_path / "kept", "active", 2)
    (tmp_path / "run").mkdir()
    _boot(monkeypatch, "a")
    _stage(t, "rootfs")
    _stage(t, "boot", failed=2)
    t.record(assessment="pending")
    _boot(monkeypatch, "b")
    _stage(t, "boot")
    first, second = kept_boots(tmp_path / "kept")
    assert (first["boot"], second["boot"]) == (1, 2)
    assert [s["stage"] for s in first["stages"]] == ["rootfs", "boot"]
    assert first["mode"] == "active" and first["snapshot"] == 2
    assert first["assessment"] == "pending"
    assert failures(first) == [("boot", 2)] and failures(second) == []
    text = render_record(first)
    assert "stage boot: 1 document(s), 1 ran, 0 skipped, 2 failed" in text
    assert "FAILED doc.yaml.1: commands: false (exit 1)" in text
    # The running boot's record is in /run as well.
    assert json.loads((tmp_path / "run" / trail.RUN_RECORD).read_text())["boot"] == 2


def test_only_the_last_boots_are_kept_and_records_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "run").mkdir()
    t = Trail(tmp_path / "run", tmp_path / "kept")
    for i in range(trail.KEEP + 5):
        _boot(monkeypatch, f"boot-{i}")
        _stage(t, "boot")
    kept = kept_boots(tmp_path / "kept")
    assert len(kept) == trail.KEEP and kept[0]["boot"] == 6 and kept[-1]["boot"] == 25
    huge = [StepOutcome("op", "failed", "x" * 100_000)] * (trail.MAX_STEPS + 50)
    monkeypatch.setattr(trail, "MAX_STAGES", 3)
    for _ in range(trail.MAX_STAGES + 2):
        t.record_stage("reconcile", seconds=1, documents=[], steps=huge, invalid=[])
    rec = kept_boots(tmp_path / "kept")[-1]
    assert len(rec["stages"]) == trail.MAX_STAGES
    assert len(rec["stages"][-1]["steps"]) == trail.MAX_STEPS
    assert len(rec["stages"][-1]["steps"][0]["detail"]) == trail.MAX_TEXT
    # The worst case of a record, whatever the configs do: a few MiB (x KEEP boots).
    worst = 30 * trail.MAX_STEPS * (3 * trail.MAX_TEXT + 60)
    assert max(p.stat().st_size for p in (tmp_path / "kept").iterdir()) < worst < 4 * 2**20


def test_a_trail_that_cannot_be_written_never_fails_the_boot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "kept").write_text("not a directory")
    _stage(Trail(tmp_path / "run", tmp_path / "kept"), "boot")
    assert "the boot trail was not written" in caplog.text


def test_logs_refuses_a_boot_it_does_not_keep(tmp_path: Path) -> None:
    inst = Installed(tmp_path / "state", tmp_path / "oem", tmp_path / "run")
    (tmp_path / "run").mkdir()
    with pytest.raises(StateError, match="no boot trail"):
        show_logs(Config(), installed=inst)
    (tmp_path / "run" / trail.RUN_RECORD).write_text(json.dumps({"boot": None, "stages": []}))
    with pytest.raises(StateError, match="no record of boot 7"):
        show_logs(Config(), boot=7, installed=inst)
    assert show_logs(Config(), installed=inst) == 0


def test_stages_not_started_are_listed_once_by_the_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    (run / trail.SKIPPED_DIR).mkdir(parents=True)
    for name in ("fs", "network"):
        (run / trail.SKIPPED_DIR / name).touch()  # what cos-stage-wanted leaves
    t = Trail(run, tmp_path / "kept", "active", 1)
    _boot(monkeypatch, "a")
    _stage(t, "boot")
    t.record(assessment="good")
    (rec,) = kept_boots(tmp_path / "kept")
    assert [(s["stage"], s.get("skipped")) for s in rec["stages"]] == [
        ("boot", None),
        ("fs", trail.NOT_STARTED),
        ("network", trail.NOT_STARTED),
    ]
    assert failures(rec) == []
    assert f"stage fs: {trail.NOT_STARTED}" in render_record(rec)


def test_a_stage_that_runs_after_all_replaces_its_not_started_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    (run / trail.SKIPPED_DIR).mkdir(parents=True)
    (run / trail.SKIPPED_DIR / "reconcile").touch()
    t = Trail(run, tmp_path / "kept", "active", 1)
    _boot(monkeypatch, "a")
    t.record(assessment="none")
    assert [s.get("skipped") for s in t.current()["stages"]] == [trail.NOT_STARTED]
    _stage(t, "reconcile")  # the timer ran it once a cloud-config named it
    assert not (run / trail.SKIPPED_DIR / "reconcile").exists()
    assert [(s["stage"], s.get("skipped")) for s in t.current()["stages"]] == [("reconcile", None)]
    # Folded once: pushed out by later stages, a not-started entry does not come back.
    (run / trail.SKIPPED_DIR / "fs").touch()
    t.record(assessment="none")
    for _ in range(trail.MAX_STAGES):
        _stage(t, "boot")
    stages = t.current()["stages"]
    assert len(stages) == trail.MAX_STAGES and {s["stage"] for s in stages} == {"boot"}
