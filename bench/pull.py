"""Pull benchmark: bytes and time of an upgrade's pull (v1 → v2, v2 = v1 + one small
layer) and of a full pull of v2 into an empty store, cos vs `skopeo copy`.

A real registry (docker-registry on 127.0.0.1) serves both images. cos pulls into its
layer store (tests.support: the same code `cos upgrade` runs), seeded with v1's blobs
for the upgrade case; skopeo copies into an OCI layout seeded the same way, which is
the floor: it too fetches only the blobs the layout lacks. Bytes are those of the
blobs that appeared in the store.

    python -m bench.run --only pull [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import (
    MIB,
    Images,
    Metrics,
    Row,
    interleave,
    new_bytes,
    rows_of,
    scratch,
    sh,
    timed,
)
from cos.oci.progress import PullProgress
from cos.oci.reference import parse_ref
from cos.oci.store import LayerStore, inspect_remote


def cos_pull(ref: str, store: Path) -> None:
    remote = inspect_remote(parse_ref(ref), tls_verify=False)
    LayerStore(store).pull(remote, "v2", tls_verify=False, progress=PullProgress())


def skopeo_copy(ref: str, layout: Path, tag: str) -> None:
    sh(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:{tag}",
        ]
    )


def bench(args: argparse.Namespace, images: Images) -> list[Row]:
    v1, v2 = images.refs()
    workdir = Path(args.workdir)
    with scratch(workdir, "cos-bench-pull-seed") as seed:
        # Seeds made once: a cos store and an OCI layout holding v1 (what a device has).
        cos_pull(v1, seed / "store")
        skopeo_copy(v1, seed / "layout", "v1")

        def run(kind: str, seeded: bool) -> Metrics:
            with scratch(workdir, "cos-bench-pull") as tmp:
                dest = tmp / "dest"
                src = seed / ("store" if kind == "cos" else "layout")
                if seeded:
                    sh(["cp", "-al", src, dest])  # hard links: the seed stays as it is
                blobs = dest / "blobs/sha256"
                before = {p.name for p in blobs.iterdir()} if seeded else set()
                if kind == "cos":
                    secs = timed(lambda: cos_pull(v2, dest))
                else:
                    secs = timed(lambda: skopeo_copy(v2, dest, "v2"))
                got = new_bytes(blobs, before)
                return {"s": secs, "MiB": got / MIB, "KiB": got / 1024}

        samples = interleave(
            args.runs,
            {
                "skopeo v1->v2": lambda: run("skopeo", True),
                "cos v1->v2": lambda: run("cos", True),
                "skopeo full": lambda: run("skopeo", False),
                "cos full": lambda: run("cos", False),
            },
        )
    return rows_of(
        "pull",
        samples,
        [
            ("skopeo copy v1->v2 (floor)", "skopeo v1->v2", "s", None),
            ("cos pull v1->v2", "cos v1->v2", "s", "skopeo copy v1->v2 (floor)"),
            ("skopeo copy full v2 (floor)", "skopeo full", "s", None),
            ("cos pull full v2", "cos full", "s", "skopeo copy full v2 (floor)"),
            ("skopeo bytes v1->v2", "skopeo v1->v2", "KiB", None),
            ("cos bytes v1->v2", "cos v1->v2", "KiB", "skopeo bytes v1->v2"),
            ("skopeo bytes full v2", "skopeo full", "MiB", None),
            ("cos bytes full v2", "cos full", "MiB", "skopeo bytes full v2"),
        ],
    )
