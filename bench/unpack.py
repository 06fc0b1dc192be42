"""Unpack benchmark: cos's unpacker vs GNU tar -x of the same layers vs umoci raw unpack.

Runs each contender side by side (interleaved, so cache and load affect all alike)
on the same OCI image and prints min/median/max wall time and the ratio to tar,
the floor: tar applies the layers without whiteouts, verification or containment.

    python -m bench.run --only unpack [--image build/oci:vanilla] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    MIB,
    REPO,
    Metrics,
    Row,
    interleave,
    rows_of,
    scratch,
    sh,
    timed,
)
from cos.oci.transport import layout_digest
from cos.oci.unpack import unpack_image


def layers(layout: Path, digest: str) -> list[Path]:
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_text())
    return [layout / "blobs/sha256" / x["digest"][7:] for x in manifest["layers"]]


def tar_x(blobs: list[Path], dest: Path) -> None:
    """The floor: GNU tar applies each layer over the last (no whiteouts, no checks)."""
    dest.mkdir()
    for b in blobs:
        sh(["tar", "-x", "-z", "--numeric-owner", "--xattrs", "-f", b, "-C", dest])


def bench(args: argparse.Namespace) -> list[Row]:
    layout_s, _, tag = args.image.rpartition(":")
    layout = Path(layout_s)
    digest = layout_digest(layout, tag)
    if digest is None:
        raise SystemExit(f"no tag {tag} in {layout} (run `make vanilla` first)")
    blobs = layers(layout, digest)
    size = sum(b.stat().st_size for b in blobs)
    workdir = Path(args.workdir)
    print(f"unpack of {args.image}: {len(blobs)} layers, {size / MIB:.1f} MiB compressed")

    def run(fn: Callable[[Path], object]) -> Metrics:
        with scratch(workdir, "cos-bench-unpack") as tmp:
            return {"s": timed(lambda: fn(tmp / "root"))}

    samples = interleave(
        args.runs,
        {
            "tar -x": lambda: run(lambda d: tar_x(blobs, d)),
            "cos": lambda: run(lambda d: unpack_image(layout, digest, d)),
            "umoci": lambda: run(
                lambda d: sh(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", d])
            ),
        },
    )
    return rows_of(
        "unpack",
        samples,
        [
            ("tar -x (floor)", "tar -x", "s", None),
            ("cos unpack", "cos", "s", "tar -x (floor)"),
            ("umoci raw unpack", "umoci", "s", "tar -x (floor)"),
        ],
    )


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--image", default=str(REPO / "build/oci:vanilla"), help="LAYOUT:TAG")
