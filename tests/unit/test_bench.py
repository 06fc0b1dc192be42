"""The benchmarks read cos's phase times from its `--json` step events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from bench import build_disk, upgrade
from bench.common import phase_sum, step_times

from tests.support import events

T = "2025-01-07T10:00:00.000Z"


Step = tuple[str, float, tuple["Step", ...]]  # title, seconds, the steps inside it


def _stream(command: str, *steps: Step) -> str:
    """A --json run of command with these steps (nested ones end before the step that
    holds them), and the other events a real run interleaves."""
    evs: list[dict[str, Any]] = [{"event": "start", "version": "0.1.0", "schema": 1, "args": {}}]

    def walk(step: Step, depth: int) -> None:
        title, secs, inner = step
        evs.append({"event": "step-start", "step": title, "depth": depth})
        if title.startswith("Pulling"):
            evs.append({"event": "progress", "what": "sha256:" + "a" * 64, "bytes": 5, "total": 5})
        for s in inner:
            walk(s, depth + 1)
        end = {"event": "step-end", "step": title, "depth": depth, "seconds": secs, "ok": True}
        evs.append(end)

    for step in steps:
        walk(step, 0)
    evs.append({"event": "log", "level": "warning", "message": "a warning"})
    evs.append({"event": "result", "ok": True, "exit_code": 0})
    return "".join(json.dumps({**e, "time": T, "command": command}) + "\n" for e in evs)


UPGRADE = _stream(
    "upgrade",
    ("Reading 127.0.0.1:5000/cos/bench:v2", 0.25, ()),
    ("Pulling 127.0.0.1:5000/cos/bench:v2", 1.5, ()),
    (
        "Building snapshot 2",
        7.0,
        (
            ("Unpacking 127.0.0.1:5000/cos/bench:v2 (sha256:0123456789ab)", 4.0, ()),
            ("Running the after-upgrade-chroot hook", 0.5, ()),
        ),
    ),
    ("Switching to snapshot 2", 0.125, ()),
)


def test_step_times_are_the_step_end_events_in_order() -> None:
    events.parse(UPGRADE)  # the canned stream keeps the rules of a real one
    assert step_times(UPGRADE) == [
        (0, "Reading 127.0.0.1:5000/cos/bench:v2", 0.25),
        (0, "Pulling 127.0.0.1:5000/cos/bench:v2", 1.5),
        (1, "Unpacking 127.0.0.1:5000/cos/bench:v2 (sha256:0123456789ab)", 4.0),
        (1, "Running the after-upgrade-chroot hook", 0.5),
        (0, "Building snapshot 2", 7.0),
        (0, "Switching to snapshot 2", 0.125),
    ]
    assert step_times("") == []


def test_phase_sum_by_title_prefix_and_depth() -> None:
    steps = step_times(UPGRADE)
    assert phase_sum(steps, "Reading", "Pulling") == 1.75
    assert phase_sum(steps, "Building", depth=1) == 0
    assert phase_sum(steps, "Unpacking", depth=1) == 4.0


def test_upgrade_phases() -> None:
    m = upgrade.cos_phases(10.0, UPGRADE)
    assert m == {
        "pull": 1.75,
        "unpack": 4.0,
        "image build": 2.5,  # the snapshot step less the unpack and the hook
        "switch": 0.125,
        "other": pytest.approx(10.0 - 1.75 - 4.0 - 2.5 - 0.125),
        "total": 10.0,
    }


def test_build_disk_phases() -> None:
    stream = _stream(
        "build-disk",
        ("Pulling oci:build/oci:vanilla", 1.0, ()),
        ("Unpacking oci:build/oci:vanilla (sha256:0123456789ab)", 2.0, ()),
        ("Building snapshot 1", 3.0, ()),
        ("Seeding the layer store", 0.5, ()),
        ("Building the recovery system", 4.0, ()),
        ("Removing the unpacked tree", 0.25, ()),
        ("Partitioning a 8192 MiB disk", 0.125, ()),
        ("Writing filesystems", 1.0, ()),
        ("Installing GRUB (ESP and BIOS boot code)", 0.5, ()),
    )
    events.parse(stream)
    m = build_disk.cos_phases(14.0, stream)
    assert m["unpack"] == 3.0
    assert m["snapshot (mkfs.ext4 -d)"] == 3.0
    assert m["layer store (skopeo)"] == 0.5
    assert m["recovery (mksquashfs)"] == 4.0
    assert m["partition + filesystems"] == 1.125
    assert m["grub"] == 0.5
    assert m["remove the tree"] == 0.25
    assert m["other"] == pytest.approx(14.0 - 12.375)
    assert m["total"] == 14.0
