"""Upgrade benchmark: wall time of a host-side `cos upgrade` v1 → v2, phase by phase,
vs the same work done by bare tools.

The device is a disk file made by `cos build-disk` from v1 (registry on 127.0.0.1),
mounted as a device the way the upgrade tests do it (tests/support/device.py: hidden
--state-dir/--oem-dir/--run-dir flags, /run/cos facts written as the initrd would).
Each run upgrades a fresh copy of that disk. cos's phases are its own step times (the
step-end events of `--json`): pull (reading the manifest and fetching the new blobs),
unpack, image build (format, mount, fsck, shrink: the snapshot step less the unpack)
and switch (state, boot env, the active link).

The floor: skopeo copy of v2 into an OCI layout holding v1 (only the new layer
travels), tar -x of v2's layers, truncate + mkfs.ext4 -d of that tree + fsync, and one
symlink rename + fsync.

    python -m bench.run --only upgrade [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tests.support.device import booted_copy, cos_env
from tests.support.images import LAYOUT, layout_digest

from bench.common import (
    Images,
    Metrics,
    Row,
    cos_cli,
    interleave,
    phase_sum,
    rows_of,
    scratch,
    sh,
    step_times,
    timed,
)
from bench.pull import skopeo_copy
from bench.unpack import layers, tar_x
from cos.disk.image import ext_image_size as image_size_for
from cos.fsutil import fsync_dir

PHASES = ("pull", "unpack", "image build", "switch")


def cos_phases(wall: float, events: str) -> Metrics:
    steps = step_times(events)
    unpack = phase_sum(steps, "Unpacking")
    hook = phase_sum(steps, "Running the after-upgrade-chroot hook")
    m = {
        "pull": phase_sum(steps, "Reading", "Pulling", depth=0),
        "unpack": unpack,
        "image build": phase_sum(steps, "Building snapshot", depth=0) - unpack - hook,
        "switch": phase_sum(steps, "Switching to snapshot", depth=0),
    }
    m["other"] = wall - sum(m.values())
    m["total"] = wall
    return m


def bench(args: argparse.Namespace, images: Images) -> list[Row]:
    v1, v2 = images.refs()
    workdir = Path(args.workdir)
    digest = layout_digest("bench-v2")
    assert digest
    blobs = layers(LAYOUT, digest)
    with scratch(workdir, "cos-bench-upgrade-seed") as seed:
        conf = seed / "etc-cos"
        conf.mkdir()
        pristine = seed / "v1.raw"
        print("building the v1 disk", flush=True)
        cos_cli("build-disk", v1, "-o", str(pristine), "--tls-verify=false", env=cos_env(conf))
        skopeo_copy(v1, seed / "layout", "v1")

        def cos() -> Metrics:
            with (
                scratch(workdir, "cos-bench-upgrade") as tmp,
                booted_copy(pristine, tmp, conf) as dev,
            ):
                wall, events = cos_cli(
                    "upgrade", "--system", v2, "--tls-verify=false", *dev.flags(), env=cos_env(conf)
                )
            return cos_phases(wall, events)

        def floor() -> Metrics:
            with scratch(workdir, "cos-bench-upgrade-floor") as tmp:
                layout = tmp / "layout"
                sh(["cp", "-al", seed / "layout", layout])
                m: Metrics = {"pull": timed(lambda: skopeo_copy(v2, layout, "v2"))}
                tree = tmp / "tree"
                m["unpack"] = timed(lambda: tar_x(blobs, tree))
                size, inodes = image_size_for(tree)
                img = tmp / "snapshot.img"

                def build() -> None:
                    with open(img, "wb") as f:
                        f.truncate(size)
                    sh(
                        [
                            "mkfs.ext4",
                            "-F",
                            "-q",
                            "-L",
                            "COS_SNAP2",
                            "-O",
                            "^has_journal",
                            "-E",
                            "lazy_itable_init=1,nodiscard,root_owner=0:0",
                            "-m",
                            "0",
                            "-N",
                            str(inodes),
                            "-d",
                            tree,
                            img,
                        ]
                    )
                    with open(img, "rb") as f:
                        os.fsync(f.fileno())

                m["image build"] = timed(build)

                def switch() -> None:
                    (tmp / "new").symlink_to("2/snapshot.img")
                    os.replace(tmp / "new", tmp / "active")
                    fsync_dir(tmp)

                m["switch"] = timed(switch)
                m["other"] = 0.0
                m["total"] = sum(m.values())
                return m

        samples = interleave(args.runs, {"bare tools": floor, "cos upgrade": cos})
    spec: list[tuple[str, str, str, str | None]] = [
        ("bare tools: total (floor)", "bare tools", "total", None),
        ("cos upgrade: total", "cos upgrade", "total", "bare tools: total (floor)"),
    ]
    for p in PHASES:
        spec.append((f"bare tools: {p}", "bare tools", p, None))
        spec.append((f"cos upgrade: {p}", "cos upgrade", p, f"bare tools: {p}"))
    spec.append(("cos upgrade: other (startup, checks, cleanup)", "cos upgrade", "other", None))
    return rows_of("upgrade", samples, spec, unit="s")
