"""cos mount: apply the immutable layout (run by the initrd inside the new root).

It also runs the early cloud-init stages: `rootfs` once /oem and the persistent
partition are mounted (the root is still read-only; /run is writable), and
`initramfs` once the layout is complete (before systemd starts). A failing stage is
reported on the console and never stops the boot.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from cos.cloudinit.hooks import record_stage, report, run_sources
from cos.cloudinit.sources import default_sources, kernel_cmdline
from cos.config import Config
from cos.errors import CosError
from cos.log import log
from cos.system.installed import Installed
from cos.system.layout import apply_layout
from cos.system.trail import Trail


def _stage(cfg: Config, name: str) -> None:
    cmdline = kernel_cmdline()
    try:
        sources = default_sources(cfg, Path("/"), cmdline)
        started = time.monotonic()
        summary, loaded, _ = run_sources(name, sources, cmdline=cmdline)
        report(name, loaded, summary)
        trail = Trail.of(Installed.running(cfg.layout.oem_mount), cfg.layout.persistent_mount)
        record_stage(trail, name, time.monotonic() - started, loaded, summary)
        if summary.failed:
            log.error("cos: stage %s: %s", name, summary.render())
    except CosError as exc:
        log.error("cos: stage %s failed: %s", name, exc)
    except Exception as exc:  # never stop the boot for a cloud-config problem
        log.error("cos: stage %s crashed: %s: %s", name, type(exc).__name__, exc)


def mount_layout(
    cfg: Config,
    mode: str,
    root: Path = Path("/"),
    oem_label: str | None = None,
    persistent_label: str | None = None,
    stages: bool = True,
) -> list[str]:
    """Labels given on the kernel command line (by GRUB, from the disk) win over config:
    the disk, not the image, knows how its partitions are labelled."""
    labels = dataclasses.replace(
        cfg.labels,
        oem=oem_label or cfg.labels.oem,
        persistent=persistent_label or cfg.labels.persistent,
    )
    run_stages = stages and root == Path("/")
    done = apply_layout(
        mode,
        cfg.layout,
        labels,
        root=root,
        after_volumes=(lambda: _stage(cfg, "rootfs")) if run_stages else None,
    )
    if run_stages:
        _stage(cfg, "initramfs")
    return done
