"""Action hooks: cloud-init stages an action runs at fixed points.

before-/after-<action> run on the running system; after-<action>-chroot runs inside
the tree being installed, with /dev, /proc and /sys bound in so that commands behave
as they would on the booted system. Hook errors are reported, not fatal, as in
Elemental: a hook can make a system unbootable, which boot assessment then catches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cos.actions.cloud_init import StageRequest, default_sources, kernel_cmdline, run
from cos.config import Config
from cos.disk.mount import mounted
from cos.log import log


def system_sources(cfg: Config) -> list[str]:
    """Hook sources of the running system: the default cloud-config paths + cmdline."""
    return default_sources(cfg, Path("/"), kernel_cmdline())


def run_hook(name: str, sources: list[str], root: Path = Path("/")) -> None:
    if not sources:
        return
    summary = run(StageRequest(name, sources, root))
    if summary.failed:
        log.warning("hook %s: %s", name, summary.render())


@contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    with ExitStack() as stack:
        for d in ("dev", "proc", "sys"):
            if (tree / d).is_dir() and not (tree / d).is_symlink():
                stack.enter_context(mounted(Path(f"/{d}"), tree / d, "bind"))
        yield


def run_chroot_hook(name: str, sources: list[str], tree: Path) -> None:
    """Run a chroot hook over the tree's own /system/oem plus the given sources."""
    own = tree / "system/oem"
    all_sources = ([str(own)] if own.is_dir() else []) + sources
    if not all_sources:
        return
    with _chroot_mounts(tree):
        run_hook(name, all_sources, tree)
