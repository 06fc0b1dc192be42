"""Boot benchmark: time to multi-user of a cos disk vs the same root filesystem booted
plainly, under the same qemu settings (tests/support/vm.py: q35, -accel tcg -cpu max,
2 CPUs, 1.5 GiB; COS_VM_CPU, COS_VM_SMP), and the time each cos unit took.

The cos disk is the e2e disk (`cos build-disk` of the e2e image: vanilla + the test
agent), booted by SeaBIOS and GRUB from a snapshot of stacked layer images on COS_STATE
(the default); the same image on a disk with a loop snapshot (one ext4 image) is the
third contender, for the layers ÷ loop ratio. The floor is the
e2e image's own tree, its cos units masked, as a plain install has it: an ext4
partition holding the tree, GRUB built from the image's own modules in the bios_grub
partition, a grub.cfg that loads the kernel and initrd with no menu wait (as the cos
test disks have none) and the same console arguments. What the root filesystem costs
without cos's boot path and stages, with the bootloader any installed system pays.
A second reference boots the same ext4 image with qemu's -kernel/-initrd (no
firmware disk reads, no bootloader): the floor of earlier versions of this bench.
Both are made once per image and kept in build/bench. The host waits as the e2e suite
does (the guest agent answers and `systemctl is-system-running --wait` returns: every
job of the boot done, cos-mark-good's assessment and status print included — "boot
finished"); "to multi-user" is that time minus what the guest's clock shows ran after
multi-user.target was reached (the login prompt is up by then). The guest's own clock
splits the boot into kernel, initrd and userspace.

Each boot holds /tmp/cos-vm.lock (the e2e suites on this machine take the same lock)
and runs on a fresh qcow2 overlay of its disk.

    python -m bench.run --only boot [--runs 3] [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import fcntl
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.images import (
    BUILD,
    LAYOUT,
    LOOP_DISK_CONFIG,
    cached_disk,
    ensure_e2e_image,
)
from tests.support.vm import VM, overlay

from bench.common import VM_LOCK, Metrics, Row, interleave, rows_of, scratch, sh
from cos.boot import grub
from cos.disk.image import copy_into
from cos.disk.image import ext_image_size as image_size_for
from cos.disk.plan import MIB
from cos.oci.unpack import unpack_image

STAGES = ("cos-setup-fs.service", "cos-setup-boot.service", "cos-setup-network.service")
CONSOLE = "console=tty1 console=ttyS0,115200 panic=5"  # what cos's grub.cfg passes
LOCK_WAITS: list[float] = []  # seconds spent waiting for the VM lock, for the summary
_CLOCK = ("UserspaceTimestampMonotonic", "FinishTimestampMonotonic")


@contextmanager
def vm_lock() -> Iterator[None]:
    """flock(2) on the shared lock file, as `flock /tmp/cos-vm.lock …` takes it."""
    with open(VM_LOCK, "a") as f:
        start = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        waited = time.monotonic() - start
        LOCK_WAITS.append(waited)
        if waited > 1:
            print(f"  (waited {waited:.0f}s for {VM_LOCK})", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _props(text: str) -> list[dict[str, str]]:
    """`systemctl show` output: blocks of KEY=VALUE separated by empty lines."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
        else:
            k, _, v = line.partition("=")
            blocks[-1][k] = v
    return [b for b in blocks if b]


def guest_times(vm: VM) -> Metrics:
    """The guest's split of the boot and the run time of each cos unit, in seconds."""
    clock = _props(vm.ok("systemctl show -p " + " -p ".join(_CLOCK)))[0]
    user, finish = (int(clock[k]) / 1e6 for k in _CLOCK)
    target = "-p ActiveEnterTimestampMonotonic multi-user.target"
    reached = int(_props(vm.ok(f"systemctl show {target}"))[0]["ActiveEnterTimestampMonotonic"])
    # The monotonic clock starts with the kernel; systemd in a dracut initrd does not
    # hand its start time on, so kernel and initrd are one figure.
    m = {
        "kernel + initrd": user,
        "userspace": reached / 1e6 - user,
        "after multi-user": finish - reached / 1e6,
    }
    names = vm.ok("systemctl list-units --all --plain --no-legend 'cos-*.service'")
    units = [ln.split()[0] for ln in names.splitlines() if ln.strip()]
    units = [u for u in units if u != "cos-e2e-agent.service"]
    cos_total = 0.0
    if units:
        props = "-p Id -p InactiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic"
        for b in _props(vm.ok(f"systemctl show {props} {' '.join(units)}")):
            start, end = (
                int(b["InactiveExitTimestampMonotonic"]),
                int(b["ActiveEnterTimestampMonotonic"]),
            )
            secs = (end - start) / 1e6 if start and end >= start else 0.0
            m[b["Id"]] = secs
            cos_total += secs
    m["cos units"] = cos_total
    return m


# Where each boot's critical chain and slowest units are kept (a slow run explained).
TRAILS = BUILD / "bench" / "boot-trails"


def boot_once(disk: Path, workdir: Path, extra: tuple[str, ...], name: str) -> Metrics:
    with scratch(workdir, "cos-bench-boot") as tmp:
        top = overlay(disk, tmp / "disk.qcow2")
        with vm_lock():
            vm = VM(top, tmp / "vm", extra_args=extra)
            try:
                start = time.monotonic()
                vm.start()
                vm.wait_multi_user(timeout=600)
                m = {"boot finished": time.monotonic() - start}
                m.update(guest_times(vm))
                m["multi-user"] = m["boot finished"] - m["after multi-user"]
                # What the guest's clock does not see: firmware, GRUB, loading the kernel
                # and initrd (and the agent's answer, alike for every contender).
                m["firmware + GRUB"] = m["multi-user"] - m["kernel + initrd"] - m["userspace"]
                TRAILS.mkdir(parents=True, exist_ok=True)
                n = len(list(TRAILS.glob(f"{name}-*.txt"))) + 1
                (TRAILS / f"{name}-{n}.txt").write_text(
                    f"multi-user {m['multi-user']:.2f} s,"
                    f" boot finished {m['boot finished']:.2f} s\n"
                    + vm.ok("systemd-analyze critical-chain --no-pager 2>&1 || true")
                    + vm.ok("systemd-analyze blame --no-pager 2>&1 | head -25 || true")
                )
            finally:
                vm.stop()
        return m


PLAIN_UUID = "c05b0000-0000-4000-8000-00000000f100"  # the floor's root filesystem
PLAIN_FORMAT = 2  # raised when the floor disk is made differently: cached ones are stale
BIOS_START, BIOS_SECTORS = 2048, 2048  # the floor disk's bios_grub partition (1 MiB)
ROOT_START = BIOS_START + BIOS_SECTORS


def plain_rootfs() -> tuple[Path, Path, tuple[str, ...]]:
    """The e2e image's tree with its cos units masked, twice: a whole-disk ext4 image
    and the qemu arguments that boot its kernel directly, and a disk a plain install
    would have (GPT, the same tree on an ext4 partition, GRUB from the image's own
    modules reading the kernel and initrd from it, no menu wait). Cached in build/bench
    by the image's digest."""
    digest = ensure_e2e_image()
    seed = BUILD / "bench" / f"plain-{digest[7:23]}-{PLAIN_FORMAT}"
    img, disk = seed / "root.raw", seed / "grub.raw"
    kernel, initrd = seed / "vmlinuz", seed / "initrd"
    append = f"root=UUID={PLAIN_UUID} rw {CONSOLE}"
    args = ("-kernel", str(kernel), "-initrd", str(initrd), "-append", append)
    if disk.exists():
        return img, disk, args
    shutil.rmtree(seed.parent, ignore_errors=True)  # older images' roots
    seed.mkdir(parents=True)
    tree = seed / "tree"
    unpack_image(LAYOUT, digest, tree)
    etc = tree / "etc/systemd/system"
    units = {
        p.name
        for d in ("usr/lib/systemd/system", "etc/systemd/system")
        for p in (tree / d).glob("cos-*")
    }
    for unit in units - {"cos-e2e-agent.service"}:
        (etc / unit).unlink(missing_ok=True)
        (etc / unit).symlink_to("/dev/null")
    sh(["cp", "-L", tree / "boot/vmlinuz", kernel])
    sh(["cp", "-L", tree / "boot/initrd", initrd])
    mods = grub.stage_modules(tree, "i386-pc", tree / "grub/i386-pc")
    (tree / "grub/grub.cfg").write_text(
        "set timeout=0\n"
        "serial --unit=0 --speed=115200\n"
        "terminal_input console serial\n"
        "terminal_output console serial\n"
        f"linux /boot/vmlinuz {append}\n"
        "initrd /boot/initrd\n"
        "boot\n"
    )
    early = seed / "early.cfg"
    early.write_text(
        f"search --no-floppy --fs-uuid --set=root {PLAIN_UUID}\nset prefix=($root)/grub\n"
    )
    core = seed / "core.img"
    grub.mkimage(mods, "i386-pc", core, early)
    shutil.copyfile(mods / "boot.img", seed / "boot.img")
    size, inodes = image_size_for(tree)
    partial = seed / "root.partial"
    with open(partial, "wb") as f:
        f.truncate(size)
    # A new file is all zeros: its inode tables are marked so, as cos marks its own
    # disks' (else the kernel zeroes them during the first boot, and the floor pays).
    opts = "root_owner=0:0,assume_storage_prezeroed=1"
    mkfs = ["mkfs.ext4", "-F", "-q", "-L", "ROOT", "-U", PLAIN_UUID, "-E", opts]
    sh([*mkfs, "-N", str(inodes), "-d", str(tree), str(partial)])
    sh(["rm", "-rf", tree])
    partial.rename(img)
    with open(partial, "wb") as f:  # the disk: bios_grub, then the root partition
        f.truncate(ROOT_START * 512 + size + MIB)
    parts = [f"-n1:{BIOS_START}:+{BIOS_SECTORS}", "-t1:ef02"]  # +N: N sectors
    parts += [f"-n2:{ROOT_START}:+{size // 512}", "-t2:8300"]
    sh(["sgdisk", *parts, str(partial)])
    copy_into(partial, img, ROOT_START * 512)
    grub.embed_bios(partial, seed / "boot.img", core, BIOS_START, BIOS_SECTORS)
    partial.rename(disk)
    return img, disk, args


def bench(args: argparse.Namespace) -> list[Row]:
    workdir = Path(args.workdir)
    cos_disk = cached_disk("disk")
    loop_disk = cached_disk("loop", config=LOOP_DISK_CONFIG)
    plain_root, plain, direct = plain_rootfs()
    shutil.rmtree(TRAILS, ignore_errors=True)
    samples = interleave(
        args.runs,
        {
            "plain": lambda: boot_once(plain, workdir, (), "plain"),
            "direct": lambda: boot_once(plain_root, workdir, direct, "direct"),
            "cos": lambda: boot_once(cos_disk, workdir, (), "cos"),
            "loop": lambda: boot_once(loop_disk, workdir, (), "loop"),
        },
    )
    spec: list[tuple[str, str, str, str | None]] = [
        ("plain: to multi-user (floor)", "plain", "multi-user", None),
        ("cos: to multi-user", "cos", "multi-user", "plain: to multi-user (floor)"),
        ("plain, kernel booted directly: to multi-user", "direct", "multi-user", None),
        (
            "cos ÷ plain booted directly",
            "cos",
            "multi-user",
            "plain, kernel booted directly: to multi-user",
        ),
        ("cos, loop snapshot: to multi-user", "loop", "multi-user", None),
        ("cos, layers ÷ loop snapshot", "cos", "multi-user", "cos, loop snapshot: to multi-user"),
        ("plain: boot finished (every boot job)", "plain", "boot finished", None),
        (
            "cos: boot finished (cos-mark-good included)",
            "cos",
            "boot finished",
            "plain: boot finished (every boot job)",
        ),
    ]
    for phase in ("firmware + GRUB", "kernel + initrd", "userspace"):
        clock = "host clock minus guest clock" if phase == "firmware + GRUB" else "guest clock"
        spec.append((f"plain: {phase} ({clock})", "plain", phase, None))
        spec.append((f"cos: {phase} ({clock})", "cos", phase, f"plain: {phase} ({clock})"))
        spec.append((f"cos, loop snapshot: {phase} ({clock})", "loop", phase, None))
    units = sorted({k for m in samples["cos"] for k in m if k.endswith(".service")})
    for u in [s for s in STAGES if s in units] + [u for u in units if u not in STAGES]:
        if all(u in m for m in samples["cos"]):
            spec.append((f"cos: {u}", "cos", u, None))
    spec.append(("cos: all cos units", "cos", "cos units", None))
    return rows_of("boot", samples, spec, unit="s")
