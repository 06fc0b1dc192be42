"""A disk file made by build-disk, mounted on the host as an installed device.

The state and OEM partitions are loop-mounted the way the initrd mounts them, and
/run/cos facts are written as the initrd would, so host-side `cos upgrade`, `rollback`
and `status` (with the hidden --state-dir/--oem-dir/--run-dir flags) act on the disk
as on a booted machine. Used by the upgrade tests and the upgrade benchmark.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos.boot import grubenv
from cos.config import Labels, Partitions
from cos.disk.plan import plan_disk
from cos.snapshot.layers import LayersSnapshotter
from tests.support.images import LAYOUT

# Small recovery and state partitions: the disks stay a few GiB.
# Partition sizes that fit the vanilla image on small test disks.
SMALL = {"COS_PARTITIONS__RECOVERY": "1024", "COS_PARTITIONS__STATE": "4096"}
GIB = 1024**3


def cos_env(conf: Path) -> dict[str, str]:
    """The environment of a cos run on such a disk: its own config dir, the shared cache."""
    return {
        **os.environ,
        "COS_CONFIG_DIR": str(conf),
        **SMALL,
        "COS_CACHE_DIR": str(LAYOUT.parent / "cache"),
    }


def partition(name: str) -> tuple[int, int]:
    """Byte offset and size of a partition of a disk built with SMALL."""
    plan = plan_disk(Partitions(recovery=1024, state=4096), Labels())
    p = plan.part(name)
    return p.offset, p.size


@contextmanager
def mount_partition(disk: Path, name: str, where: Path) -> Iterator[Path]:
    offset, size = partition(name)
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-o", f"loop,offset={offset},sizelimit={size}", str(disk), str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-d", str(where)], check=True)


def snapshot_mounted(state: Path, n: int, where: Path) -> AbstractContextManager[Path]:
    """Snapshot n of a mounted COS_STATE, read-only, whichever its kind: its loop image,
    or its layer images stacked as the initrd stacks them."""
    return LayersSnapshotter(state).mounted(n, where)


def booted_image(state: Path, n: int) -> str:
    """What the initrd records in /run/cos/image for a boot of snapshot n."""
    d = f".snapshots/{n}"
    return d if LayersSnapshotter(state).is_stack(n) else f"{d}/snapshot.img"


@dataclass
class Device:
    disk: Path
    state: Path
    oem: Path
    run: Path
    conf: Path

    def cos(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "cos", *args, *self.flags()],
            capture_output=True,
            text=True,
            env=cos_env(self.conf),
            check=False,
        )
        assert not check or r.returncode == 0, f"cos {' '.join(args)}: {r.returncode}\n{r.stderr}"
        return r

    def flags(self) -> list[str]:
        return [
            "--state-dir",
            str(self.state),
            "--oem-dir",
            str(self.oem),
            "--run-dir",
            str(self.run),
        ]

    def boot(self, mode: str, snapshot: int | None) -> None:
        """Write what the initrd leaves in /run/cos for a boot of snapshot in mode."""
        for f in self.run.glob("*_mode"):
            f.unlink()
        (self.run / f"{mode}_mode").touch()
        (self.run / "upgrade_failure").unlink(missing_ok=True)
        (self.run / "image").write_text(booted_image(self.state, snapshot) if snapshot else "")

    def active(self) -> int:
        return int(os.readlink(self.state / ".snapshots/active").split("/")[0])

    def env(self) -> dict[str, str]:
        return grubenv.read(self.oem / "grubenv")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.cos("status", "--json").stdout)
        return out


@contextmanager
def booted_copy(pristine: Path, workdir: Path, conf: Path) -> Iterator[Device]:
    """A sparse copy of pristine in workdir, mounted as a device booted in active mode
    from snapshot 1; unmounted on the way out."""
    disk = workdir / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(pristine), str(disk)], check=True)
    with (
        mount_partition(disk, "state", workdir / "state") as state,
        mount_partition(disk, "oem", workdir / "oem") as oem,
    ):
        dev = Device(disk, state, oem, workdir / "run", conf)
        dev.run.mkdir()
        dev.boot("active", 1)
        yield dev


def kill_upgrades(
    dev: Device,
    refs: Sequence[str],
    check: Callable[[int], None],
    release: Callable[[Device], None],
    seed: int,
    kills: int = 20,
) -> None:
    """SIGKILL `cos upgrade --force` (and its children) at `kills` random instants, the
    refs taken in turn; after each, release() drops what the dead run left mounted and
    check(round) looks at what a boot would find. Instants are drawn within the shortest
    complete run seen, so most rounds cut an upgrade in the middle."""
    t0 = time.monotonic()
    dev.cos("upgrade", "--system", refs[-1], "--tls-verify=false", "--force")
    full = time.monotonic() - t0
    rng = random.Random(seed)
    done = 0
    for i in range(3 * kills):
        if done == kills:
            break
        dev.boot("active", dev.active())
        argv = [sys.executable, "-m", "cos", "upgrade", "--tls-verify=false", "--force"]
        proc = subprocess.Popen(
            [*argv, "--system", refs[i % len(refs)], *dev.flags()],
            env=cos_env(dev.conf),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started = time.monotonic()
        time.sleep(rng.uniform(0.1, full * 0.9))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            done += 1
        else:
            full = min(full, time.monotonic() - started)
        proc.wait()
        release(dev)
        check(i)
        json.dumps(dev.status())
    assert done >= kills
