"""layout: grow the last partition of a disk and add partitions after it.

Only on the running system (it changes block devices). The device is found by
filesystem label, then partition label, or given as a path; `script://CMD` runs CMD
and takes its output as the device path, as in yip.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cos.cloudinit.plugins.base import Context, PluginError
from cos.errors import ToolError

MIB = 1024 * 1024


def _disk_of(part: str) -> str:
    """/dev/vda3 → /dev/vda; /dev/nvme0n1p2 → /dev/nvme0n1; /dev/loop0p1 → /dev/loop0."""
    m = re.fullmatch(r"(/dev/(?:nvme\d+n\d+|loop\d+|mmcblk\d+))p\d+", part)
    if m:
        return m.group(1)
    m = re.fullmatch(r"(/dev/[a-z]+)\d+", part)
    if m:
        return m.group(1)
    return part


def _device(spec: dict[str, Any], ctx: Context) -> str:
    dev = spec.get("device") or {}
    if dev.get("path"):
        path = str(dev["path"])
        if path.startswith("script://"):
            path = ctx.sh(path[len("script://") :]).stdout.strip()
        return path
    label = dev.get("label")
    if not label:
        raise PluginError("layout.device needs a label or a path")
    for flag in ("LABEL", "PARTLABEL"):
        r = ctx.tool(["blkid", "-o", "device", "-t", f"{flag}={label}"], check=False)
        if r.returncode == 0 and r.stdout.strip():
            return _disk_of(r.stdout.split()[0])
    raise PluginError(f"no device with label {label!r}")


def _describe(spec: dict[str, Any]) -> str:
    dev = spec.get("device") or {}
    where = f"label {dev['label']}" if dev.get("label") else str(dev.get("path") or "?")
    grow = " grow the last partition," if spec.get("expand_partition") is not None else ""
    adds = len(spec.get("add_partitions") or [])
    return f"of the disk with {where}:{grow} add {adds} partition(s)"


def _parts(ctx: Context, disk: str) -> list[dict[str, Any]]:
    import json

    out = ctx.tool(["sfdisk", "--json", disk]).stdout
    return list(json.loads(out).get("partitiontable", {}).get("partitions", []))


def layout(step: dict[str, Any], ctx: Context) -> None:
    spec = step["layout"]
    if not ctx.live:
        raise PluginError("layout only applies to the running system (not --root)")
    if ctx.dry_run:  # finding the disk probes devices (or runs a script): not in a dry run
        ctx.act(f"layout {_describe(spec)}")
        return
    disk = _device(spec, ctx)
    if not Path(disk).exists():
        raise PluginError(f"device {disk} does not exist")
    try:
        if spec.get("expand_partition") is not None:
            _expand(disk, int(spec["expand_partition"].get("size") or 0), ctx)
        for p in spec.get("add_partitions") or []:
            _add(disk, p, ctx)
    except ToolError as exc:
        raise PluginError(f"layout on {disk}: {exc}") from exc


def _expand(disk: str, size_mib: int, ctx: Context) -> None:
    parts = _parts(ctx, disk)
    if not parts:
        raise PluginError(f"{disk} has no partitions to expand")
    last = parts[-1]
    num = re.search(r"(\d+)$", last["node"])
    assert num is not None
    if not ctx.act(f"grow partition {last['node']} to {size_mib or 'all'} MiB"):
        return
    ctx.tool(["sgdisk", "-e", disk], check=False)  # move the backup GPT to the disk's end
    size = f"{size_mib}MiB" if size_mib else "+"  # "+": all the free space after it
    ctx.tool(["sfdisk", "--no-reread", "-N", num.group(1), disk], input=f",{size}\n")
    ctx.tool(["partx", "-u", disk], check=False)
    fstype = ctx.tool(["blkid", "-o", "value", "-s", "TYPE", last["node"]], check=False).stdout
    if fstype.strip().startswith("ext"):
        ctx.tool(["resize2fs", last["node"]])


def _add(disk: str, p: dict[str, Any], ctx: Context) -> None:
    plabel = p.get("pLabel") or ""
    if plabel and any(x.get("name") == plabel for x in _parts(ctx, disk)):
        return  # already there
    if not ctx.act(f"add partition {plabel or '?'} ({p.get('size') or 'rest'} MiB) to {disk}"):
        return
    ctx.tool(["sgdisk", "-e", disk], check=False)
    size = f"+{p['size']}M" if p.get("size") else "0"
    args = ["sgdisk", f"--new=0:0:{size}"]
    if plabel:
        args.append(f"--change-name=0:{plabel}")
    before = {x["node"] for x in _parts(ctx, disk)}
    ctx.tool([*args, disk])
    ctx.tool(["partx", "-a", disk], check=False)
    new = [x["node"] for x in _parts(ctx, disk) if x["node"] not in before]
    if not new:
        raise PluginError(f"the new partition on {disk} did not appear")
    fs = (p.get("filesystem") or "ext2").lower()
    if fs in ("noformat", "-", "none"):
        return
    label = p.get("fsLabel") or ""
    if fs in ("vfat", "fat"):
        mkfs = ["mkfs.vfat", *(["-n", label] if label else [])]
    elif fs in ("xfs", "btrfs"):
        mkfs = [f"mkfs.{fs}", "-f", *(["-L", label] if label else [])]
    else:
        mkfs = [f"mkfs.{fs}", "-F", *(["-L", label] if label else [])]
    ctx.tool([*mkfs, new[0]])
