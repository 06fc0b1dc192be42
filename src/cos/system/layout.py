"""`cos mount`: turn a read-only snapshot into a usable system.

Runs inside the new root from the initrd (chroot /sysroot), after the dracut module
has mounted the snapshot as / and a tmpfs at /run/cos/overlay. Order matters:
volumes first (/oem, then COS_PERSISTENT at /usr/local), then the ephemeral tmpfs
overlays, then the persistent paths: overlays whose upper dirs live on
COS_PERSISTENT and plain directories there bind-mounted in place (a container
runtime's own overlays need a lower filesystem that is not itself an overlay); each
group sorted by depth so a parent is mounted before its children; last the machine's
identity (cos.system.identity).

A boot usually takes the same steps in shell (/usr/libexec/cos-layout, from the
initrd) and starts no Python; this module is the reference the tests hold the shell
to, and the path for what the shell leaves to it (live media, a configured layout, a
cloud-config for the rootfs or initramfs stage).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from cos import run as runner
from cos.config import Labels, Layout
from cos.disk.mounts import AmbiguousLabel, find_device, is_mountpoint, mount_point_of, mount_source
from cos.errors import StateError
from cos.fsutil import inside
from cos.log import log, step
from cos.system.identity import seed_identity
from cos.system.installed import RUN_DIR, Mode

OVERLAY_BASE = "/run/cos/overlay"
# Where the initrd mounts a layers snapshot's images (0 = top), kept for the booted system.
LAYERS_RUN = "/run/cos/layers"
OPAQUE = "trusted.overlay.opaque"
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


def stack_lowers(layers: list[Path], rel: str) -> list[Path]:
    """The directories of a stack of layers (top first) that overlayfs merges at rel:
    each layer's rel as long as no layer above hides it (a whiteout, a file, or an
    opaque directory on the way)."""
    lowers = list(layers)
    parts = Path(rel).parts
    for i in range(1, len(parts) + 1):
        kept: list[Path] = []
        for layer in lowers:
            here = layer.joinpath(*parts[:i])
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                break  # a whiteout or a file: what lies below is hidden
            kept.append(layer)
            try:
                if os.getxattr(here, OPAQUE, follow_symlinks=False) == b"y":
                    break
            except OSError:
                pass
        lowers = kept
    return [layer.joinpath(*parts) for layer in lowers]


def _lowers(target: Path, root: Path) -> str:
    """What an overlay at target stacks on. A snapshot of layers is itself an overlay:
    a path straight on it gets the layers' own directories instead, so the overlays
    cos mounts on top stay within overlayfs's stacking depth of two."""
    layers = sorted(
        (p for p in (root / LAYERS_RUN.lstrip("/")).glob("*") if p.name.isdecimal()),
        key=lambda p: int(p.name),
    )
    if not layers or not target.is_dir() or mount_point_of(target) != os.path.realpath(root):
        return str(target)
    rel = str(target.relative_to(root))
    found = stack_lowers(layers, rel)
    return ":".join(str(p) for p in found) if found else str(target)


def _overlay(target: Path, upper_root: Path, root: Path = Path("/")) -> None:
    upper, work = upper_root / "upper", upper_root / "work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    _mount(
        [
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={_lowers(target, root)},upperdir={upper},workdir={work}",
            str(target),
        ]
    )


def _volume(label: str, timeout: float, root: Path) -> str | None:
    """The device labelled label on the disk this system booted from. A label that is
    on two disks and cannot be told apart is not mounted: another system's persistent
    data is neither shown nor written."""
    try:
        return find_device(label, timeout, near=mount_source(inside(root, str(RUN_DIR / "state"))))
    except AmbiguousLabel as exc:
        log.error("%s; not mounted (%s)", exc.message, exc.hint)
        return None


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
        oem_dev = None if mode == Mode.LIVE else _volume(labels.oem, device_timeout, root)
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
            pdev = _volume(labels.persistent, device_timeout, root)
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
            _overlay(target, base / overlay_name(path), root)
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
                    _overlay(target, state / overlay_name(path), root)
                done.append(path)
    seed_identity(mode, layout.persistent_mount, persistent_mounted or mode == Mode.LIVE, root)
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
