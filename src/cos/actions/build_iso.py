"""cos build-iso: installation media that boot the image live (BIOS and EFI).

The ISO holds the image twice, for two uses: as `rootfs.squashfs`, the tree the live
system runs (mounted read-only by the cos initrd module, `cos.mode=live`, with RAM
overlays and nothing on local disks touched), and as an OCI layout (`image/`, tag
`live`), so `cos install DEVICE` without `--system` installs the very same image
offline with the same code path as from a registry. grub-mkrescue makes the hybrid
layout (El Torito BIOS and EFI entries, an MBR/GPT for USB sticks written with dd).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cos import events
from cos import run as runner
from cos.boot.oem import cloud_init_names
from cos.cloudinit.hooks import run_hook
from cos.cloudinit.sources import build_sources, check_cloud_init
from cos.config import Config
from cos.disk import image as diskimg
from cos.errors import DiskError, UsageError
from cos.fsutil import fsync_dir
from cos.log import log, step
from cos.oci.image import unpack
from cos.oci.reference import parse_ref
from cos.oci.store import LayerStore, fetch
from cos.system.kernel import check_bootable

REQUIRED_TOOLS = ["grub-mkrescue", "xorriso", "mksquashfs", "mformat", "skopeo"]
LIVE_TAG = "live"
ROOTFS = "rootfs.squashfs"
IMAGE_DIR = "image"
CONFIG_DIR = "iso-config"


@dataclass(frozen=True, kw_only=True)
class BuildIsoRequest:
    image: str
    output: Path
    cloud_init: list[Path] = field(default_factory=list)
    label: str = "COS_LIVE"
    overlay: Path | None = None


def _grub_cfg(label: str, title: str, cmdline: str) -> str:
    return f"""set timeout=3
set default=0
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
search --no-floppy --label --set=root {label}
menuentry "{title}" {{
    linux /boot/vmlinuz {cmdline}
    initrd /boot/initrd
}}
"""


def _check(req: BuildIsoRequest) -> Path:
    out = req.output.absolute()
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist", hint="create the output directory first")
    if out.exists() and not out.is_file():
        raise UsageError(f"{out} exists and is not a file", hint="choose another OUT path")
    if not (1 <= len(req.label) <= 32) or not all(
        c.isupper() or c.isdigit() or c == "_" for c in req.label
    ):
        raise UsageError(
            f"ISO label {req.label!r} is not valid",
            hint="use 1-32 characters from A-Z 0-9 _ (ISO 9660 volume id)",
        )
    if req.overlay is not None and not req.overlay.is_dir():
        raise UsageError(f"--overlay-iso {req.overlay} is not a directory")
    check_cloud_init(req.cloud_init)
    return out


def build_iso(req: BuildIsoRequest, cfg: Config) -> Path:
    out = _check(req)
    ref = parse_ref(req.image)
    runner.require(*REQUIRED_TOOLS)
    hooks = build_sources(cfg, req.cloud_init)
    run_hook("before-iso", hooks)
    work = Path(tempfile.mkdtemp(prefix=".cos-iso-", dir=out.parent))
    partial = out.with_name(f".{out.name}.partial")
    try:
        iso = work / "iso"
        with step(f"Pulling {ref}"):
            img = fetch(ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
        events.summary(image=str(img.ref), digest=img.digest)
        tree = work / "tree"
        with step(f"Unpacking {ref}"):
            unpack(img, tree)
        boot = check_bootable(tree, ref)
        (iso / "boot/grub").mkdir(parents=True)
        shutil.copyfile(boot.vmlinuz, iso / "boot/vmlinuz")
        shutil.copyfile(boot.initrd, iso / "boot/initrd")
        with step("Squashing the live root filesystem"):
            diskimg.mksquashfs(tree, iso / ROOTFS)
        shutil.rmtree(tree)
        if img.ref.transport != "dir":
            with step("Adding the image for offline installs"):
                LayerStore(iso / IMAGE_DIR).add(img, LIVE_TAG)
        conf = iso / CONFIG_DIR
        conf.mkdir()
        for src, name in zip(req.cloud_init, cloud_init_names(req.cloud_init), strict=True):
            shutil.copyfile(src, conf / name)
        if req.overlay is not None:
            shutil.copytree(req.overlay, iso, dirs_exist_ok=True, symlinks=True)
        cmdline = " ".join(
            x
            for x in (
                f"root=LABEL={req.label}",
                f"cos.image=/{ROOTFS}",
                "cos.mode=live",
                f"cos.setup=/run/cos/state/{CONFIG_DIR}",
                "console=tty1 console=ttyS0,115200 rd.shell=0 rd.emergency=reboot panic=5",
                cfg.extra_cmdline,
            )
            if x
        )
        (iso / "boot/grub/grub.cfg").write_text(_grub_cfg(req.label, f"cos live ({ref})", cmdline))
        with step(f"Writing {out.name} (BIOS + EFI, hybrid)"):
            runner.run(["grub-mkrescue", "-o", str(partial), str(iso), "--", "-volid", req.label])
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, out)
        digest = hashlib.sha256()
        with open(out, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        sums = out.with_name(out.name + ".sha256")
        sums.write_text(f"{digest.hexdigest()}  {out.name}\n")
        fsync_dir(out.parent)
        run_hook("after-iso", hooks)
    except OSError as exc:
        raise DiskError(
            f"writing the ISO failed: {exc.strerror or exc} ({exc.filename or out.parent})",
            hint="check free space and permissions where OUT and its temporary files are written",
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    log.info("ISO ready: %s (%d MiB)", out, out.stat().st_size >> 20)
    events.summary(output=str(out), bytes=out.stat().st_size)
    return out
