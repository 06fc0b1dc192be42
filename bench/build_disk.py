"""build-disk benchmark: `cos build-disk` of an OCI image vs its own steps run bare.

cos's phases are its own step times (the step-end events of `--json`). The floor
runs the tools build-disk is made of, bare, on the same image: tar -x of the layers,
truncate + mkfs.ext4 -d of the tree (snapshot 1), skopeo copy into the layer store,
mksquashfs of the tree (recovery, zstd level 3 as cos does), sgdisk, and
removing the tree, mkfs.ext4 -d of the oem, recovery and state directories (+ an
empty persistent) at their offsets in one sparse disk file. GRUB (grub-mkimage, the
ESP) has no floor row: it is listed as it is.

    python -m bench.run --only build-disk [--image build/oci:vanilla] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from bench.common import (
    MIB,
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
from bench.unpack import layers, tar_x
from cos.config import Labels, Partitions
from cos.disk.image import ext_image_size as image_size_for
from cos.disk.plan import plan_disk, sgdisk_args
from cos.oci.transport import layout_digest

# (phase, titles of the top-level steps (depth 0) of cos that make it up)
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("unpack", ("Pulling", "Unpacking")),
    ("snapshot (mkfs.ext4 -d)", ("Building snapshot",)),
    ("layer store (skopeo)", ("Seeding the layer store",)),
    ("recovery (mksquashfs)", ("Building the recovery system",)),
    ("partition + filesystems", ("Partitioning", "Writing filesystems")),
    ("grub", ("Preparing GRUB", "Installing GRUB")),
    ("remove the tree", ("Removing the unpacked tree",)),
]
_EXT = ["-F", "-q", "-m", "0"]
_EXT_OPTS = "lazy_itable_init=1,nodiscard,root_owner=0:0"


def cos_phases(wall: float, events: str) -> Metrics:
    steps = step_times(events)
    m = {name: phase_sum(steps, *titles, depth=0) for name, titles in PHASES}
    m["other"] = wall - sum(m.values())
    m["total"] = wall
    return m


def floor_run(layout: Path, tag: str, blobs: list[Path], tmp: Path) -> Metrics:
    tree = tmp / "tree"
    m: Metrics = {"unpack": timed(lambda: tar_x(blobs, tree))}
    state, rec, oem = tmp / "state", tmp / "recovery", tmp / "oem"
    snap = state / ".snapshots/1/snapshot.img"
    size, inodes = image_size_for(tree)

    def snapshot() -> None:
        snap.parent.mkdir(parents=True)
        with open(snap, "wb") as f:
            f.truncate(size)
        argv = ["mkfs.ext4", *_EXT, "-O", "^has_journal", "-E", _EXT_OPTS, "-N", str(inodes)]
        sh([*argv, "-L", "COS_SNAP1", "-d", str(tree), str(snap)])

    m["snapshot (mkfs.ext4 -d)"] = timed(snapshot)
    m["layer store (skopeo)"] = timed(
        lambda: sh(["skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci:{state}/.store:s1"])
    )

    def recovery() -> None:
        (rec / "boot.1").mkdir(parents=True)
        out = rec / "boot.1/recovery.img"
        opts = ["-comp", "zstd", "-Xcompression-level", "3", "-noappend", "-quiet", "-no-progress"]
        sh(["mksquashfs", str(tree), str(out), *opts])
        for f in ("vmlinuz", "initrd"):
            shutil.copyfile(tree / "boot" / f, rec / "boot.1" / f)

    m["recovery (mksquashfs)"] = timed(recovery)
    # The tree is not needed once its images are made: cleaning up is part of the work.
    m["remove the tree"] = timed(lambda: shutil.rmtree(tree))
    oem.mkdir()
    plan = plan_disk(Partitions(), Labels())
    disk = tmp / "disk.raw"

    def filesystems() -> None:
        with open(disk, "wb") as f:
            f.truncate(plan.size_mib * MIB)
        sh(["sgdisk", *sgdisk_args(plan), disk])
        for name, src in (("oem", oem), ("recovery", rec), ("state", state), ("persistent", None)):
            p = plan.part(name)
            opts = f"offset={p.offset},{_EXT_OPTS}"
            argv = ["mkfs.ext4", *_EXT, "-L", str(p.label), "-E", opts]
            argv += ["-d", str(src)] if src is not None else []
            sh([*argv, disk, f"{p.size // 1024}k"])
        with open(disk, "rb") as f:
            os.fsync(f.fileno())

    m["partition + filesystems"] = timed(filesystems)
    m["grub"] = 0.0
    m["other"] = 0.0
    m["total"] = sum(m.values())
    return m


def bench(args: argparse.Namespace) -> list[Row]:
    layout_s, _, tag = args.image.rpartition(":")
    layout = Path(layout_s)
    digest = layout_digest(layout, tag)
    if digest is None:
        raise SystemExit(f"no tag {tag} in {layout} (run `make vanilla` first)")
    blobs = layers(layout, digest)
    workdir = Path(args.workdir)

    def cos() -> Metrics:
        with scratch(workdir, "cos-bench-build-disk") as tmp:
            (tmp / "etc-cos").mkdir()
            env = {
                **os.environ,
                "COS_CONFIG_DIR": str(tmp / "etc-cos"),
                "COS_CACHE_DIR": str(tmp / "cache"),
            }
            wall, events = cos_cli(
                "build-disk", f"oci:{args.image}", "-o", str(tmp / "disk.raw"), env=env
            )
            return cos_phases(wall, events)

    def floor() -> Metrics:
        with scratch(workdir, "cos-bench-build-disk-floor") as tmp:
            return floor_run(layout, tag, blobs, tmp)

    samples = interleave(args.runs, {"bare tools": floor, "cos build-disk": cos})
    spec: list[tuple[str, str, str, str | None]] = [
        ("bare tools: total (floor)", "bare tools", "total", None),
        ("cos build-disk: total", "cos build-disk", "total", "bare tools: total (floor)"),
    ]
    for p, _ in PHASES:
        if p == "grub":
            spec.append((f"cos build-disk: {p}", "cos build-disk", p, None))
            continue
        spec.append((f"bare tools: {p}", "bare tools", p, None))
        spec.append((f"cos build-disk: {p}", "cos build-disk", p, f"bare tools: {p}"))
    spec.append(("cos build-disk: other (startup, checks, state)", "cos build-disk", "other", None))
    return rows_of("build-disk", samples, spec, unit="s")
