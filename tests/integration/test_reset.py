"""cos reset on a loop block device (no VM): installed, then reset from the recovery image.

The installation gets labels of its own, so the label lookups of reset can only ever
find this test's partitions. The partitions are mounted the way the recovery boot
mounts them: COS_RECOVERY where COS_STATE usually is, COS_OEM read-write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from cos.config import Labels, Partitions
from cos.disk.plan import plan_disk
from tests.support import events
from tests.support.device import GIB, SMALL, snapshot_mounted
from tests.support.images import LAYOUT

pytestmark = pytest.mark.integration

_TAG = f"R{os.getpid() % 100000}"
LABELS = Labels(
    efi=f"{_TAG}EFI",
    oem=f"{_TAG}OEM",
    recovery=f"{_TAG}REC",
    state=f"{_TAG}STATE",
    persistent=f"{_TAG}PERS",
)


def _env(conf: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COS_CONFIG_DIR": str(conf),
        **SMALL,
        "COS_CACHE_DIR": str(LAYOUT.parent / "cache"),
        **{f"COS_LABELS__{k.upper()}": v for k, v in LABELS.__dict__.items()},
    }


def _losetup(*argv: str) -> str:
    return subprocess.run(
        ["losetup", *argv], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def installed(tmp_path: Path, vanilla: str) -> Iterator[tuple[Path, Path]]:
    """(loop device with partition nodes, config dir) of a fresh installation."""
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    backing = tmp_path / "disk.raw"
    with open(backing, "wb") as f:
        f.truncate(6 * GIB)
    dev = _losetup("--find", "--show", str(backing))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "cos", "install", dev, "--system", f"oci:{LAYOUT}:vanilla"],
            capture_output=True,
            text=True,
            env=_env(conf),
            check=False,
        )
        assert r.returncode == 0, r.stderr
    finally:
        _losetup("-d", dev)
    # Attached again with partition nodes (partx: no udev here): reset finds its
    # partitions by label.
    dev = _losetup("--partscan", "--find", "--show", str(backing))
    try:
        subprocess.run(["partx", "-a", dev], capture_output=True, check=False)
        assert Path(f"{dev}p5").is_block_device()
        yield Path(dev), conf
    finally:
        subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
        _losetup("-d", dev)


def test_reset_from_the_recovery_image(installed: tuple[Path, Path], tmp_path: Path) -> None:
    dev, conf = installed
    plan = plan_disk(Partitions(recovery=1024, state=4096), LABELS, 6 * 1024)

    def mount(stack: ExitStack, name: str, where: Path, opts: str = "") -> Path:
        p = plan.part(name)
        where.mkdir()
        subprocess.run(
            ["mount", "-o", f"{opts}loop,offset={p.offset},sizelimit={p.size}", dev, where],
            check=True,
        )
        stack.callback(subprocess.run, ["umount", "-d", str(where)], check=True)
        return where

    run = tmp_path / "run"
    run.mkdir()
    (run / "recovery_mode").touch()
    with ExitStack() as stack:
        rec = mount(stack, "recovery", tmp_path / "rec", "ro,")
        oem = mount(stack, "oem", tmp_path / "oem")
        flags = ["--state-dir", str(rec), "--oem-dir", str(oem), "--run-dir", str(run)]
        r = subprocess.run(
            [sys.executable, "-m", "cos", "reset", "--json", *flags],
            capture_output=True,
            text=True,
            env=_env(conf),
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert "Reset done" in r.stderr
        recovery_state = yaml.safe_load((rec / "state.yaml").read_text())["recovery"]

    evs = events.parse(r.stdout)
    steps = [e["step"] for e in events.of(evs, "step-end") if e["ok"]]
    assert steps[0].startswith("Formatting the state partition")
    assert "Building snapshot 1" in steps and steps[-1] == "Resetting the boot menu"
    res = events.result(evs)
    assert (res["ok"], res["exit_code"], res["snapshot"], res["changed"]) == (True, 0, 1, True)
    assert (res["image"], res["digest"]) == (recovery_state["source"], recovery_state["digest"])

    with ExitStack() as stack:
        state = mount(stack, "state", tmp_path / "state", "ro,")
        st = yaml.safe_load((state / "state.yaml").read_text())
        assert st["snapshots"][1]["from-action"] == "reset"
        assert [h["action"] for h in st["history"]][-1] == "reset"
        # Redeployed from the recovery tree as one layer (the default snapshotter).
        assert (state / ".snapshots/1/layers").is_file()
        with snapshot_mounted(state, 1, tmp_path / "snap") as snap:
            assert (snap / "usr/bin/cos").is_file() and (snap / "etc/os-release").is_file()

    # Not in recovery mode: refused before any write, as an error event and a result.
    (run / "recovery_mode").rename(run / "active_mode")
    r = subprocess.run(
        [sys.executable, "-m", "cos", "reset", "--json", *flags],
        capture_output=True,
        text=True,
        env=_env(conf),
        check=False,
    )
    assert r.returncode == 7, r.stderr
    events.check_failed(r.stdout, 7, "cannot run in active mode")
