"""Upgrade benchmark: wall time of a host-side `cos upgrade` v1 → v2, phase by phase,
vs the same work done by bare tools.

The device is a disk file made by `cos build-disk` from v1 (registry on 127.0.0.1),
its state and OEM partitions loop-mounted the way tests/integration/test_upgrade.py
does it (hidden --state-dir/--oem-dir/--run-dir flags, /run/cos facts written as the
initrd would). Each run upgrades a fresh copy of that disk. cos's phases come from its
--debug transcript (the "done in Xs" of each step): pull (reading the manifest and
fetching the new blobs), unpack, image build (format, mount, fsck, shrink: the
snapshot step less the unpack) and switch (state, boot env, the active link).

The floor: skopeo copy of v2 into an OCI layout holding v1 (only the new layer
travels), tar -x of v2's layers, truncate + mkfs.ext4 -d of that tree + fsync, and one
symlink rename + fsync.

    python bench/upgrade.py [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import (
    Images,
    Metrics,
    Row,
    cos_cli,
    interleave,
    phase_sum,
    rows_of,
    run_with_images,
    scratch,
    sh,
    step_times,
    timed,
)
from pull import skopeo_copy
from tests.integration.test_upgrade import Device, _env, _mount
from tests.support.images import LAYOUT, layout_digest
from unpack import layers, tar_x

from cos.disk.image import ext_image_size as image_size_for
from cos.fsutil import fsync_dir

PHASES = ("pull", "unpack", "image build", "switch")


def cos_phases(wall: float, transcript: str) -> Metrics:
    steps = step_times(transcript)
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
        cos_cli("build-disk", v1, "-o", str(pristine), "--tls-verify=false", env=_env(conf))
        skopeo_copy(v1, seed / "layout", "v1")

        def cos() -> Metrics:
            with scratch(workdir, "cos-bench-upgrade") as tmp:
                disk = tmp / "disk.raw"
                sh(["cp", "--sparse=always", pristine, disk])
                with (
                    _mount(disk, "state", tmp / "state") as state,
                    _mount(disk, "oem", tmp / "oem") as oem,
                ):
                    dev = Device(disk, state, oem, tmp / "run", conf)
                    dev.run.mkdir()
                    dev.boot("active", 1)
                    wall, transcript = cos_cli(
                        "upgrade",
                        "--system",
                        v2,
                        "--tls-verify=false",
                        *dev.flags(),
                        env=_env(conf),
                    )
                return cos_phases(wall, transcript)

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


def main() -> int:
    return run_with_images("upgrade", __doc__, bench)


if __name__ == "__main__":
    sys.exit(main())
