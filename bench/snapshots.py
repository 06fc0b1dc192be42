"""Snapshot backends side by side: what an upgrade costs with loop images and with
shared layers, and what kept snapshots take on COS_STATE.

For each backend two v1 disks are built once (`snapshotter` set through
COS_SNAPSHOTTER); each run upgrades a fresh copy of each on the host, the way the
upgrade tests do: v1 → v2 (v1 + one small layer), and an image whose ~50 MB middle
layer changes below an identical small top layer (Images.middle_refs). Measured per
run: the upgrade's wall time, and the bytes written to the state partition's loop
device (/sys/block/loopN/stat, sectors written, after a sync before and after). Then,
once per backend, three more upgrades with max-snaps 4 (v2 → v1 → v2 --force, each
kept, as far as the 4 GiB test partition holds them): the space the snapshots take on
COS_STATE (their files, shared content once) over the unpacked size of v1 (its layers'
tar streams), and how many fit.

The floor is the loop backend: ratios say what layers cost relative to it.

    python -m bench.run --only snapshots [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.device import Device, booted_copy, cos_env

from bench.common import (
    MIB,
    MIDDLE_BYTES,
    Images,
    Metrics,
    Row,
    cos_cli,
    interleave,
    rows_of,
    scratch,
    settle,
)
from cos.config import Filesystem, SnapshotterKind
from cos.disk.mounts import mount_table
from cos.oci.store import LayerStore, snapshot_tag
from cos.snapshot import new_snapshotter

KINDS = (SnapshotterKind.LOOP, SnapshotterKind.LAYERS)


def _written(mountpoint: Path) -> int:
    """Bytes written so far to the loop device mounted at mountpoint."""
    settle()
    dev = next(src for src, mnt in mount_table() if mnt == str(mountpoint))
    stat = Path(f"/sys/block/{Path(dev).name}/stat").read_text().split()
    return int(stat[6]) * 512


def _conf(seed: Path, kind: SnapshotterKind, max_snaps: int) -> Path:
    conf = seed / f"etc-cos-{kind}-{max_snaps}"
    conf.mkdir(exist_ok=True)
    (conf / "config.yaml").write_text(f"snapshotter: {kind}\nmax-snaps: {max_snaps}\n")
    return conf


def bench(args: argparse.Namespace, images: Images) -> list[Row]:
    v1, v2 = images.refs()
    m1, m2 = images.middle_refs()
    scenarios = {"small": (v1, v2), "middle": (m1, m2)}
    workdir = Path(args.workdir)
    with scratch(workdir, "cos-bench-snapshots-seed") as seed:
        disks = {}
        for kind in KINDS:
            for name, (source, _) in scenarios.items():
                print(f"building the {name} v1 disk ({kind})", flush=True)
                disks[kind, name] = seed / f"v1-{kind}-{name}.raw"
                env = {**cos_env(_conf(seed, kind, 2)), "COS_SNAPSHOTTER": str(kind)}
                disk = str(disks[kind, name])
                cos_cli("build-disk", source, "-o", disk, "--tls-verify=false", env=env)

        def upgrade(kind: SnapshotterKind) -> Callable[[], Metrics]:
            def run() -> Metrics:
                out: Metrics = {}
                for name, (_, target) in scenarios.items():
                    conf = _conf(seed, kind, 2)
                    with (
                        scratch(workdir, "cos-bench-snapshots") as tmp,
                        booted_copy(disks[kind, name], tmp, conf) as dev,
                    ):
                        before = _written(dev.state)
                        t0 = time.monotonic()
                        dev.cos("upgrade", "--system", target, "--tls-verify=false")
                        out[f"{name} s"] = time.monotonic() - t0
                        written = _written(dev.state) - before
                        out[f"{name} MiB"] = written / MIB
                        out[f"{name} x"] = written / MIDDLE_BYTES
                return out

            return run

        samples = interleave(args.runs, {str(k): upgrade(k) for k in KINDS})
        kept: dict[str, list[Metrics]] = {}
        for kind in KINDS:
            conf = _conf(seed, kind, 4)
            with (
                scratch(workdir, "cos-bench-snapshots-kept") as tmp,
                booted_copy(disks[kind, "small"], tmp, conf) as dev,
            ):
                for ref in (v2, v1, v2):
                    r = dev.cos(
                        "upgrade", "--system", ref, "--tls-verify=false", "--force", check=False
                    )
                    if r.returncode != 0:  # the state partition is full: keep what fits
                        print(f"  {kind}: {r.stderr.strip().splitlines()[-2]}", flush=True)
                        break
                    dev.boot("active", dev.active())
                held = _held(dev)
                unpacked = LayerStore.on(dev.state).unpacked_size(snapshot_tag(1))
                count = len(
                    new_snapshotter(dev.state, Filesystem.EXT4, SnapshotterKind.LAYERS).numbers()
                )
                kept[str(kind)] = [{"MiB": held / MIB, "x": held / unpacked, "kept": count}]
    small, middle = "upgrade v1→v2 (one small layer added)", "upgrade, a 50 MB middle layer changed"
    rows = []
    for name, what in (("small", small), ("middle", middle)):
        rows += rows_of(
            "snapshots",
            samples,
            [
                (f"loop: {what} (floor)", "loop", f"{name} s", None),
                (f"layers: {what}", "layers", f"{name} s", f"loop: {what} (floor)"),
            ],
            unit="s",
        )
        rows += rows_of(
            "snapshots",
            samples,
            [
                (f"loop: {what}, written (floor)", "loop", f"{name} MiB", None),
                (
                    f"layers: {what}, written",
                    "layers",
                    f"{name} MiB",
                    f"loop: {what}, written (floor)",
                ),
            ],
            unit="MiB",
        )
    rows += rows_of(
        "snapshots",
        samples,
        [("layers: written ÷ the 50 MB changed", "layers", "middle x", None)],
        unit="x",
    )
    rows += rows_of(
        "snapshots",
        kept,
        [
            ("loop: 4 snapshots on COS_STATE (floor)", "loop", "MiB", None),
            (
                "layers: 4 snapshots on COS_STATE",
                "layers",
                "MiB",
                "loop: 4 snapshots on COS_STATE (floor)",
            ),
            ("loop: snapshots that fit (of 4)", "loop", "kept", None),
            ("layers: snapshots that fit (of 4)", "layers", "kept", None),
            ("loop: 4 snapshots ÷ v1 unpacked", "loop", "x", None),
            ("layers: 4 snapshots ÷ v1 unpacked", "layers", "x", None),
        ],
    )
    return rows


def _held(dev: Device) -> int:
    """Bytes the snapshots take together (the layers backend reads both kinds)."""
    return new_snapshotter(dev.state, Filesystem.EXT4, SnapshotterKind.LAYERS).total_bytes()
