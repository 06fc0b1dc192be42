"""Unpack benchmark: cos's unpacker vs GNU tar -x of the same layers vs umoci raw unpack.

Runs each contender side by side (interleaved, so cache and load affect all alike)
on the same OCI image and prints min/median/max wall time and the ratio to tar,
the floor: tar applies the layers without whiteouts, verification or containment.

    python bench/unpack.py [--image build/oci:vanilla] [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cos.oci.transport import layout_digest  # noqa: E402
from cos.oci.unpack import unpack_image  # noqa: E402


def layers(layout: Path, digest: str) -> list[Path]:
    manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_text())
    return [layout / "blobs/sha256" / x["digest"][7:] for x in manifest["layers"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(REPO / "build/oci:vanilla"), help="LAYOUT:TAG")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    layout_s, _, tag = args.image.rpartition(":")
    layout = Path(layout_s)
    digest = layout_digest(layout, tag)
    if digest is None:
        print(f"no tag {tag} in {layout} (run `make vanilla` first)", file=sys.stderr)
        return 2
    blobs = layers(layout, digest)
    size = sum(b.stat().st_size for b in blobs)

    def tar(dest: Path) -> None:
        dest.mkdir()
        for b in blobs:
            subprocess.run(
                ["tar", "-x", "-z", "--numeric-owner", "--xattrs", "-f", str(b), "-C", str(dest)],
                check=True,
            )

    def umoci(dest: Path) -> None:
        subprocess.run(
            ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
            check=True,
            capture_output=True,
        )

    def cos(dest: Path) -> None:
        unpack_image(layout, digest, dest)

    contenders: dict[str, Callable[[Path], None]] = {"tar -x": tar, "cos": cos, "umoci": umoci}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.runs):
        for name, fn in contenders.items():
            with tempfile.TemporaryDirectory(dir=args.workdir, prefix="cos-bench-") as tmp:
                dest = Path(tmp) / "root"
                start = time.monotonic()
                fn(dest)
                times[name].append(time.monotonic() - start)
                shutil.rmtree(dest, ignore_errors=True)

    floor = statistics.median(times["tar -x"])
    print(
        f"unpack of {args.image}: {len(blobs)} layers, {size / 2**20:.1f} MiB compressed, "
        f"{args.runs} runs each"
    )
    print(f"{'contender':10} {'min s':>8} {'median s':>9} {'max s':>8} {'vs tar':>7}")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:10} {min(t):8.2f} {med:9.2f} {max(t):8.2f} {med / floor:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
