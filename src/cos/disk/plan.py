"""Partition planning: pure arithmetic, so it is tested without touching a disk; and
reading the plan back from an existing disk's GPT."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.config import Labels, Partitions
from cos.errors import DiskError, ToolError

MIB = 1024 * 1024
SECTOR = 512
ALIGN_MIB = 1  # first partition at 1 MiB, every partition 1 MiB aligned
GPT_TAIL_MIB = 1  # room for the backup GPT


@dataclass(frozen=True)
class PartSpec:
    number: int
    name: str  # GPT PARTLABEL
    label: str | None  # filesystem label
    fs: str | None  # ext4, vfat, or None (BIOS boot)
    type_code: str  # sgdisk type code
    start_mib: int
    size_mib: int

    @property
    def offset(self) -> int:
        return self.start_mib * MIB

    @property
    def size(self) -> int:
        return self.size_mib * MIB

    def fs_label(self) -> str:
        """The filesystem label of a partition that holds a filesystem."""
        if self.label is None:
            raise DiskError(f"partition {self.name} holds no filesystem")
        return self.label

    @property
    def start_lba(self) -> int:
        return self.offset // SECTOR

    @property
    def end_lba(self) -> int:
        return (self.offset + self.size) // SECTOR - 1


@dataclass(frozen=True)
class DiskPlan:
    size_mib: int
    parts: tuple[PartSpec, ...]

    def part(self, name: str) -> PartSpec:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)


DEFAULT_PERSISTENT_MIB = 1024  # when the disk size is not given and persistent is "rest"
MIN_PERSISTENT_MIB = 64


def plan_disk(
    sizes: Partitions, labels: Labels, disk_mib: int | None = None, expandable: bool = False
) -> DiskPlan:
    """Lay out bios, efi, oem, recovery, state, persistent (DESIGN §3).

    An expandable disk stops after recovery: state and persistent are added on its
    first boot, in whatever room the disk has by then (cloud images of any size)."""
    fixed = [
        ("bios", None, None, "EF02", sizes.bios),
        ("efi", labels.efi, "vfat", "EF00", sizes.efi),
        ("oem", labels.oem, "ext4", "8300", sizes.oem),
        ("recovery", labels.recovery, "ext4", "8300", sizes.recovery),
        ("state", labels.state, "ext4", "8300", sizes.state),
    ]
    if expandable:
        fixed = fixed[:-1]
    used = ALIGN_MIB + sum(f[4] for f in fixed)
    if expandable:
        total = disk_mib if disk_mib is not None else used + GPT_TAIL_MIB
        if total < used + GPT_TAIL_MIB:
            raise DiskError(
                f"disk size {total} MiB is too small: the layout needs at least"
                f" {used + GPT_TAIL_MIB} MiB",
                hint="give a larger --size or smaller partitions in config (partitions.*)",
            )
        return DiskPlan(total, tuple(_specs(fixed)))
    if sizes.persistent:
        persistent = sizes.persistent
        need = used + persistent + GPT_TAIL_MIB
    else:
        need = used + MIN_PERSISTENT_MIB + GPT_TAIL_MIB
        persistent = DEFAULT_PERSISTENT_MIB if disk_mib is None else disk_mib - used - GPT_TAIL_MIB
    total = disk_mib if disk_mib is not None else used + persistent + GPT_TAIL_MIB
    if total < need:
        raise DiskError(
            f"disk size {total} MiB is too small: the layout needs at least {need} MiB",
            hint="give a larger --size or smaller partitions in config (partitions.*)",
        )
    parts = _specs(fixed)
    start = parts[-1].start_mib + parts[-1].size_mib
    parts.append(
        PartSpec(len(parts) + 1, "persistent", labels.persistent, "ext4", "8300", start, persistent)
    )
    return DiskPlan(total, tuple(parts))


def _specs(fixed: list[tuple[str, str | None, str | None, str, int]]) -> list[PartSpec]:
    parts: list[PartSpec] = []
    start = ALIGN_MIB
    for i, (name, label, fs, code, size) in enumerate(fixed, start=1):
        parts.append(PartSpec(i, name, label, fs, code, start, size))
        start += size
    return parts


def sgdisk_args(plan: DiskPlan) -> list[str]:
    """Arguments for sgdisk that create the plan on an empty disk (image)."""
    args = ["--clear"]
    for p in plan.parts:
        args += [
            f"--new={p.number}:{p.start_lba}:{p.end_lba}",
            f"--typecode={p.number}:{p.type_code}",
            f"--change-name={p.number}:{p.name}",
        ]
    return args


def read_plan(disk: Path) -> DiskPlan:
    """The layout of an existing cos disk, from its GPT (names are the PARTLABELs)."""
    try:
        table = json.loads(runner.run(["sfdisk", "--json", str(disk)]).stdout)["partitiontable"]
        sector = int(table.get("sectorsize", SECTOR))
        parts = tuple(
            PartSpec(
                i,
                str(p.get("name", "")),
                None,
                None,
                "",
                int(p["start"]) * sector // MIB,
                int(p["size"]) * sector // MIB,
            )
            for i, p in enumerate(table["partitions"], start=1)
        )
        size = int(table["lastlba"]) * sector // MIB
    except (ToolError, ValueError, KeyError, TypeError) as exc:
        raise DiskError(f"cannot read the partition table of {disk}: {exc}") from exc
    return DiskPlan(size, parts)
