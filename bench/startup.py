"""Start-up benchmark: what a cos command costs before it does anything, next to a bare
Python start (the floor): `cos --help`, `cos status` on a system not booted by cos
(it stops at its first check), and `cos run-stage` for a stage no document has.

These are the costs every boot unit pays once per boot, so they bound how fast the
cos units can be. 20 starts per run, interleaved.

    python -m bench.run --only startup [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Metrics, Row, interleave, rows_of

STARTS = 20


def _starts(argv: list[str], env: dict[str, str]) -> Callable[[], Metrics]:
    def run() -> Metrics:
        start = time.monotonic()
        for _ in range(STARTS):
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {"ms": (time.monotonic() - start) / STARTS * 1000}

    return run


def bench(args: argparse.Namespace) -> list[Row]:
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="cos-bench-startup-") as tmp:
        empty = Path(tmp) / "cloud-config"
        empty.mkdir()
        env = {**os.environ, "COS_CONFIG_DIR": str(Path(tmp) / "etc"), "COS_CLOUD_INIT_PATHS": ""}
        contenders = {
            "python3 -c pass (floor)": _starts([py, "-c", "pass"], env),
            "cos --help": _starts([py, "-m", "cos", "--help"], env),
            "cos status": _starts([py, "-m", "cos", "status"], env),
            "cos cloud-init, nothing to run": _starts(
                [py, "-m", "cos", "cloud-init", "-s", "no-such-stage", str(empty)], env
            ),
        }
        samples = interleave(args.runs, contenders)
    floor = "python3 -c pass (floor)"
    return rows_of(
        "startup",
        samples,
        [(name, name, "ms", None if name == floor else floor) for name in contenders],
    )
