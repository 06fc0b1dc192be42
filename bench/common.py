"""Shared pieces of the benchmarks: interleaved runs, cos's step times, the table.

Every benchmark compares cos with a floor (the bare tools doing the same work). The
contenders run interleaved, run by run, with the order rotated each run, so a burst
of load from the rest of the machine hits all of them rather than one; dirty pages are
written back (untimed) before each timed part, so one contender's writeback is not
charged to the next. Each benchmark returns rows; `print_table` prints the absolute
figures (min/median/max over the runs) with the ratio of the median to the floor's.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.images import derive, ensure_vanilla, push
from tests.support.registry import registry

REPO = Path(__file__).resolve().parents[1]

MIB = 1 << 20
MIDDLE_BYTES = 50 * 10**6  # the changed middle layer of Images.middle_refs
# Machines under qemu are started only while holding this lock: the e2e suites and
# the VM benchmarks of everyone on this machine take the same one.
VM_LOCK = "/tmp/cos-vm.lock"

Metrics = dict[str, float]


@dataclass
class Row:
    """One measured quantity of one contender, with the row it is compared to."""

    bench: str
    what: str
    unit: str  # "s", "MiB", "KiB": also the key of the value in a contender's Metrics
    values: list[float] = field(default_factory=list)
    floor: str | None = None  # the `what` of the row this one is divided by

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def settle() -> None:
    """Write back dirty pages now, so the next timed part does not pay for the last one."""
    os.sync()


def sh(
    argv: Sequence[str | os.PathLike[str]], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a tool, its output kept for the error message only."""
    r = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {r.returncode}\n{r.stderr[-3000:]}")
    return r


def timed(fn: Callable[[], object]) -> float:
    settle()
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def interleave(runs: int, contenders: dict[str, Callable[[], Metrics]]) -> dict[str, list[Metrics]]:
    """Call each contender once per run, rotating the order; collect what each returns."""
    names = list(contenders)
    out: dict[str, list[Metrics]] = {n: [] for n in names}
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            out[name].append(contenders[name]())
            print(f"  {name} run {i + 1}/{runs}: " + _brief(out[name][-1]), flush=True)
    return out


def _brief(m: Metrics) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in m.items())


def rows_of(
    bench: str,
    samples: dict[str, list[Metrics]],
    spec: Sequence[tuple[str, str, str, str | None]],
    unit: str | None = None,
) -> list[Row]:
    """Rows (what, contender, metric, floor what) picked out of interleave()'s samples;
    the unit is the metric's name unless given."""
    rows = []
    for what, contender, metric, floor in spec:
        values = [m[metric] for m in samples[contender]]
        rows.append(Row(bench, what, unit or metric, values, floor))
    return rows


Step = tuple[int, str, float]  # (depth, title, seconds) of one finished step


def step_times(events: str) -> list[Step]:
    """(depth, title, seconds) of each step of a `cos --json` event stream, in the
    order the steps ended (docs/json-events.md: the `step-end` events)."""
    out: list[Step] = []
    for line in events.splitlines():
        if not line.strip():
            continue
        ev = json.loads(line)
        if ev.get("event") == "step-end":
            out.append((int(ev["depth"]), str(ev["step"]), float(ev["seconds"])))
    return out


def phase_sum(steps: Sequence[Step], *prefixes: str, depth: int | None = None) -> float:
    """Seconds of the steps whose title starts with one of prefixes."""
    return sum(s for d, t, s in steps if t.startswith(prefixes) and (depth is None or d == depth))


def cos_cli(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `python -m cos ARGS --json`; returns (wall seconds, the event stream)."""
    argv = [sys.executable, "-m", "cos", *args, "--json"]
    settle()
    start = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    wall = time.monotonic() - start
    if r.returncode != 0:
        raise RuntimeError(f"cos {' '.join(args)}: exit {r.returncode}\n{r.stderr[-4000:]}")
    return wall, r.stdout


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def new_bytes(blobs: Path, before: set[str]) -> int:
    """Bytes of the files in blobs that were not there before (what a pull fetched)."""
    if not blobs.is_dir():
        return 0
    return sum(f.stat().st_size for f in blobs.iterdir() if f.name not in before)


@contextmanager
def scratch(workdir: Path, name: str) -> Iterator[Path]:
    """A directory of workdir removed afterwards (untimed), even when the run fails."""
    d = workdir / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-R", "-q", str(d)], check=False, capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def fmt_table(rows: Sequence[Row]) -> str:
    """The table: absolute figures (min/median/max) and the ratio to the floor's median."""
    width = max([len(r.what) for r in rows] + [20])
    head = f"{'bench':11} {'measurement':{width}} {'unit':4} {'min':>8} {'median':>8} {'max':>8}"
    lines = [head + f" {'ratio':>6}  vs", "-" * (len(head) + 30)]
    by = {(r.bench, r.what): r for r in rows}
    last = None
    for r in rows:
        if last is not None and r.bench != last:
            lines.append("")
        last = r.bench
        ratio, vs = "", ""
        if r.floor is not None and (f := by.get((r.bench, r.floor))) and f.median > 0:
            ratio, vs = f"{r.median / f.median:6.2f}", r.floor
        elif r.floor is None:
            ratio = "     -"
        lines.append(
            f"{r.bench:11} {r.what:{width}} {r.unit:4} {min(r.values):8.2f} {r.median:8.2f} "
            f"{max(r.values):8.2f} {ratio:>6}  {vs}"
        )
    return "\n".join(lines)


def print_table(title: str, rows: Sequence[Row]) -> None:
    print(f"\n{title}\n{fmt_table(rows)}", flush=True)


class Images:
    """v1 (the vanilla image) and v2 (v1 + one small layer) in a registry on 127.0.0.1.

    Started on first use and shared by the benchmarks of one run; `close()` stops it.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._stack = ExitStack()
        self._refs: tuple[str, str] | None = None
        self._registry: str | None = None

    def _host(self) -> str:
        if self._registry is None:
            ensure_vanilla()
            reg = self.workdir / "cos-bench-registry"
            shutil.rmtree(reg, ignore_errors=True)
            self._stack.callback(shutil.rmtree, reg, True)
            self._registry = self._stack.enter_context(registry(reg))
        return self._registry

    def refs(self) -> tuple[str, str]:
        if self._refs is None:
            host = self._host()
            derive("vanilla", "bench-v2", {"/etc/cos-bench-version": "v2\n"})
            print(f"registry on {host}: pushing v1 and v2", flush=True)
            self._refs = (
                push("vanilla", host, "cos/bench:v1"),
                push("bench-v2", host, "cos/bench:v2"),
            )
        return self._refs

    def middle_refs(self) -> tuple[str, str]:
        """Two images that differ in one ~50 MB layer below an identical top layer:
        vanilla + MIDDLE (one of two contents) + the same small layer."""
        host = self._host()
        refs = []
        for version in ("1", "2"):
            blob = random.Random(version).randbytes(MIDDLE_BYTES // 2).hex()
            derive("vanilla", f"bench-mid{version}", {"/opt/cos-bench/middle": blob})
            derive(f"bench-mid{version}", f"bench-mid{version}-top", {"/etc/cos-bench": "top\n"})
            refs.append(push(f"bench-mid{version}-top", host, f"cos/bench:mid{version}"))
        return refs[0], refs[1]

    def close(self) -> None:
        self._stack.close()
