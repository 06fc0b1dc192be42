"""`cos mount`: turn a read-only snapshot into a usable system.

Runs inside the new root from the initrd (chroot /sysroot), after the dracut module
has mounted the snapshot as / and a tmpfs at /run/cos/overlay. Order matters:
volumes first (/oem, then COS_PERSISTENT at /usr/local), then the ephemeral tmpfs
overlays, then the persistent paths: overlays whose upper dirs live on
COS_PERSISTENT and plain directories there bind-mounted in place (a container
runtime's own overlays need a lower filesystem that is not itself an overlay); each
group sorted by depth so a parent is mounted before its children.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cos import run as runner
from cos.config import Labels, Layout
from cos.disk.mounts import find_device, is_mountpoint
from cos.errors import StateError
from cos.fsutil import inside
from cos.log import log, step
from cos.system.installed import Mode

OVERLAY_BASE = "/run/cos/overlay"
PERSISTENT_STATE_DIR = ".state"


def overlay_name(path: str) -> str:
    """/var/log → var-log.overlay (the naming Elemental uses for upper dirs)."""
    return path.strip("/").replace("/", "-") + ".overlay"


def bind_name(path: str) -> str:
    """/var/lib/kubelet → var-lib-kubelet.bind (Elemental names bind dirs this way)."""
    return path.strip("/").replace("/", "-") + ".bind"


def _depth(path: str) -> tuple[int, str]:
    return (len(Path(path).parts), path)


def _mount(argv: list[str]) -> None:
    runner.run(["mount", *argv])


def _overlay(target: Path, upper_root: Path) -> None:
    upper, work = upper_root / "upper", upper_root / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _mount(
        [
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={target},upperdir={upper},workdir={work}",
            str(target),
        ]
    )


def apply_layout(
    mode: str,
    layout: Layout,
    labels: Labels | None = None,
    root: Path = Path("/"),
    device_timeout: float = 30.0,
    after_volumes: Callable[[], None] | None = None,
) -> list[str]:
    """Mount the layout below root; return the mount points made, in order."""
    if mode not in list(Mode):
        raise StateError(
            f"unknown boot mode {mode!r}", hint=f"one of: {', '.join(m.value for m in Mode)}"
        )
    labels = labels or Labels()
    done: list[str] = []

    if mode == Mode.LIVE:
        # Booted from installation media: nothing on local disks is touched, and the
        # paths that persist on an installed system are writable in RAM instead.
        layout = Layout(
            ephemeral=sorted(
                {*layout.ephemeral, *layout.persistent, *layout.persistent_bind}
                | {layout.persistent_mount}
            ),
            ephemeral_size=layout.ephemeral_size,
            persistent=[],
            persistent_bind=[],
            oem_mount=layout.oem_mount,
            persistent_mount=layout.persistent_mount,
        )
    with step("Mounting volumes"):
        oem_dev = None if mode == Mode.LIVE else find_device(labels.oem, device_timeout)
        oem = inside(root, layout.oem_mount)
        if oem_dev is None:
            if mode != Mode.LIVE:
                log.warning("no %s filesystem found; %s stays empty", labels.oem, layout.oem_mount)
        elif not is_mountpoint(oem):
            oem.mkdir(parents=True, exist_ok=True)
            _mount(["-o", "rw,noatime", oem_dev, str(oem)])
            done.append(layout.oem_mount)
        persistent_mounted = False
        if mode not in (Mode.RECOVERY, Mode.LIVE):
            pdev = find_device(labels.persistent, device_timeout)
            pmount = inside(root, layout.persistent_mount)
            if pdev is None:
                log.warning(
                    "no %s filesystem found; persistent paths are ephemeral", labels.persistent
                )
            else:
                if not is_mountpoint(pmount):
                    _mount(["-o", "rw,noatime", pdev, str(pmount)])
                    done.append(layout.persistent_mount)
                persistent_mounted = True

    if after_volumes is not None:
        after_volumes()

    with step("Mounting ephemeral overlays"):
        base = inside(root, OVERLAY_BASE)
        if not is_mountpoint(base):
            base.mkdir(parents=True, exist_ok=True)
            _mount(
                [
                    "-t",
                    "tmpfs",
                    "-o",
                    f"mode=0755,size={layout.ephemeral_size}",
                    "cos-overlay",
                    str(base),
                ]
            )
        for path in sorted(set(layout.ephemeral), key=_depth):
            target = inside(root, path)
            if not target.is_dir():
                log.warning("ephemeral path %s does not exist in the image; skipped", path)
                continue
            _overlay(target, base / overlay_name(path))
            done.append(path)

    if persistent_mounted:
        with step("Mounting persistent paths"):
            state = inside(root, layout.persistent_mount) / PERSISTENT_STATE_DIR
            binds = set(layout.persistent_bind)
            for path in sorted(set(layout.persistent) | binds, key=_depth):
                target = inside(root, path)
                if not target.is_dir():
                    try:
                        target.mkdir(parents=True)
                    except OSError:
                        log.warning(
                            "persistent path %s cannot be created on the read-only root", path
                        )
                        continue
                if path in binds:
                    _bind(target, state / bind_name(path))
                else:
                    _overlay(target, state / overlay_name(path))
                done.append(path)
    return done


def _bind(target: Path, source: Path) -> None:
    """A plain directory on COS_PERSISTENT in place of target; the first time, it starts
    as a copy of what the image has there (owners, modes, xattrs kept)."""
    if not source.is_dir():
        partial = source.with_name(source.name + ".partial")
        runner.run(["rm", "-rf", "--one-file-system", str(partial)])
        copied = runner.run(["cp", "-a", f"{target}/.", str(partial)], check=False)
        if copied.returncode != 0:
            log.warning("%s: the image's content was not copied: %s", target, copied.stderr)
        partial.mkdir(parents=True, exist_ok=True)
        partial.rename(source)  # a power loss while copying leaves no half-seeded dir
    _mount(["--bind", str(source), str(target)])
