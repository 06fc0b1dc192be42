"""All benchmarks in one run (`make bench`): each prints its table as it finishes, then
one table of them all and the wall time of the suite.

    python -m bench.run [--runs 3] [--workdir /var/tmp] [--only pull,upgrade,...]

Run from the repository root (it imports cos and tests.support), as root, after
`make vanilla`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import boot, build_disk, pull, rechunk, snapshots, startup, unpack, upgrade
from bench.common import Images, Row, print_table

BENCHES = ("startup", "unpack", "pull", "upgrade", "snapshots", "build-disk", "boot", "rechunk")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    unpack.add_args(ap)
    ap.add_argument("--runs", type=int, default=3, help="runs per contender (>= 3 for the table)")
    ap.add_argument("--workdir", default="/var/tmp", help="scratch space (several GiB)")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset")
    args = ap.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    images = Images(Path(args.workdir))
    suite: dict[str, Callable[[], list[Row]]] = {
        "startup": lambda: startup.bench(args),
        "unpack": lambda: unpack.bench(args),
        "pull": lambda: pull.bench(args, images),
        "upgrade": lambda: upgrade.bench(args, images),
        "snapshots": lambda: snapshots.bench(args, images),
        "build-disk": lambda: build_disk.bench(args),
        "boot": lambda: boot.bench(args),
        "rechunk": lambda: rechunk.bench(args),
    }
    rows: list[Row] = []
    took: dict[str, float] = {}
    start = time.monotonic()
    try:
        for name in (b for b in BENCHES if b in chosen):
            print(f"\n=== {name}", flush=True)
            t0 = time.monotonic()
            got = suite[name]()
            took[name] = time.monotonic() - t0
            print_table(name, got)
            rows += got
    finally:
        images.close()
    total = time.monotonic() - start
    print_table(f"all benchmarks ({args.runs} runs each, ratio = median / floor's median)", rows)
    waits = sum(boot.LOCK_WAITS)
    print(
        f"\nsuite took {total / 60:.1f} min ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in took.items())
        + (f"; {waits / 60:.1f} min of it waiting for the VM lock" if waits >= 1 else "")
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
