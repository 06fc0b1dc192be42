"""Features: what `cos init` installs into an image so it boots the cos way.

Each feature is a small installer acting on an image root. They are kept in a
registry so a derivative can pick a subset (`cos init grub-config systemd`) and later
features (cloud-config defaults, boot assessment) slot in without touching the action.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.data import data_path
from cos.errors import ImageError
from cos.fsutil import inside
from cos.log import step
from cos.system.kernel import require_kernel


@dataclass(frozen=True)
class Feature:
    name: str
    summary: str
    install: Callable[[Path], None]


FEATURES: dict[str, Feature] = {}


def feature(name: str, summary: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        FEATURES[name] = Feature(name, summary, fn)
        return fn

    return register


class Undo:
    """What an installation changed, to put back when it fails halfway: files and links
    as they were (or absent), directories it made. A failed `cos init` leaves the tree
    as it found it."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def path(self, target: Path) -> None:
        """Before target (a file or link) is written or removed."""
        if target.is_symlink():
            old_link = os.readlink(target)
            self._steps.append(lambda: _put_link(target, old_link))
        elif target.is_file():
            old, mode = target.read_bytes(), target.stat().st_mode & 0o7777
            self._steps.append(lambda: _put_file(target, old, mode))
        elif not target.exists():
            self._steps.append(lambda: target.unlink(missing_ok=True))

    def mkdir(self, d: Path) -> None:
        """Make d and its missing parents, remembering which were made."""
        missing = [p for p in [d, *d.parents] if not p.exists() and not p.is_symlink()]
        d.mkdir(parents=True, exist_ok=True)
        for p in reversed(missing):  # undone deepest first (steps run in reverse)
            self._steps.append(functools.partial(_rmdir_if_empty, p))

    def rollback(self) -> None:
        for undo in reversed(self._steps):
            with contextlib.suppress(OSError):  # best effort: the rest still goes back
                undo()
        self._steps.clear()


def _put_link(target: Path, to: str) -> None:
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(to)


def _put_file(target: Path, data: bytes, mode: int) -> None:
    if target.is_symlink():
        target.unlink()
    target.write_bytes(data)
    target.chmod(mode)


def _rmdir_if_empty(d: Path) -> None:
    if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
        d.rmdir()


_UNDO: list[Undo] = []  # the running installation's journal (installing())


@contextmanager
def installing() -> Iterator[Undo]:
    """Journal every change the features make; on an exception, undo them all."""
    undo = Undo()
    _UNDO.append(undo)
    try:
        yield undo
    except BaseException:
        undo.rollback()
        raise
    finally:
        _UNDO.pop()


def _journal_path(target: Path) -> None:
    if _UNDO:
        _UNDO[-1].path(target)


def _mkdir(d: Path) -> None:
    if _UNDO:
        _UNDO[-1].mkdir(d)
    else:
        d.mkdir(parents=True, exist_ok=True)


def _write(root: Path, path: str, content: str | bytes, mode: int = 0o644) -> None:
    target = inside(root, path)
    _mkdir(target.parent)
    _journal_path(target)
    if isinstance(content, str):
        target.write_text(content)
    else:
        target.write_bytes(content)
    target.chmod(mode)


# Units of earlier versions that an image being initialised again may still have.
# cos-status.service: the status is printed by cos-mark-good.service (one Python start).
RETIRED_UNITS = (("cos-status.service", "multi-user.target"),)


def _retire_unit(root: Path, unit: str, wanted_by: str) -> None:
    for path in (f"/etc/systemd/system/{wanted_by}.wants/{unit}", f"/etc/systemd/system/{unit}"):
        target = inside(root, path)
        if target.is_symlink() or target.exists():
            _journal_path(target)
            target.unlink()


def _enable_unit(root: Path, unit: str, wanted_by: str) -> None:
    wants = inside(root, f"/etc/systemd/system/{wanted_by}.wants")
    _mkdir(wants)
    link = wants / unit
    _journal_path(link)
    if link.is_symlink() or link.exists():
        link.unlink()
    src = f"/etc/systemd/system/{unit}"
    if not inside(root, src).exists():
        src = f"/usr/lib/systemd/system/{unit}"
    link.symlink_to(src)


@feature("immutable-rootfs", "dracut module mounting the snapshot read-only as /")
def _immutable_rootfs(root: Path) -> None:
    module = "/usr/lib/dracut/modules.d/90cos"
    shipped = {e.name for e in data_path("dracut", "90cos").iterdir()}
    dest = inside(root, module)
    for old in dest.iterdir() if dest.is_dir() else []:
        if old.name not in shipped:  # a file an older toolkit shipped
            _journal_path(old)
            old.unlink()
    for entry in data_path("dracut", "90cos").iterdir():
        _write(root, f"{module}/{entry.name}", entry.read_bytes(), 0o755)
    _write(
        root,
        "/etc/dracut.conf.d/90-cos.conf",
        "# Written by cos init: a generic initrd that boots cos snapshots.\n"
        'hostonly="no"\n'
        'compress="zstd"\n'
        'add_dracutmodules+=" cos "\n'
        # The classic shell init is enough to mount a loop image, and it is simpler
        # and faster than a systemd initrd.
        'omit_dracutmodules+=" systemd systemd-initrd dracut-systemd systemd-networkd'
        ' systemd-sysusers plymouth "\n',
    )


@feature("grub-config", "GRUB menu and bootargs used by build-disk and install")
def _grub_config(root: Path) -> None:
    _write(root, "/etc/cos/grub.cfg", data_path("grub", "grub.cfg").read_text())
    _write(root, "/etc/cos/bootargs.cfg", data_path("grub", "bootargs.cfg").read_text())


@feature("layout", "mount points of the immutable layout (/oem, /usr/local, tmpfs /tmp)")
def _layout(root: Path) -> None:
    for d in ("/oem", "/usr/local", "/run", "/etc/cos/config.d"):
        _mkdir(inside(root, d))
    # /tmp must be writable on a read-only root.
    tmp_unit = inside(root, "/usr/share/systemd/tmp.mount")
    if tmp_unit.is_file():
        _write(root, "/etc/systemd/system/tmp.mount", tmp_unit.read_text())
        _enable_unit(root, "tmp.mount", "local-fs.target")


@feature(
    "systemd",
    "units of the toolkit: cloud-init stages fs/boot/network/reconcile, status, boot"
    " assessment, unattended install from live media",
)
def _systemd(root: Path) -> None:
    for entry in data_path("systemd").iterdir():
        _write(root, f"/etc/systemd/system/{entry.name}", entry.read_text())
    for entry in data_path("libexec").iterdir():
        _write(root, f"/usr/libexec/{entry.name}", entry.read_text(), 0o755)
    for unit, wanted_by in RETIRED_UNITS:
        _retire_unit(root, unit, wanted_by)
    _enable_unit(root, "cos-setup-fs.service", "sysinit.target")
    _enable_unit(root, "cos-setup-boot.service", "multi-user.target")
    _enable_unit(root, "cos-setup-network.service", "multi-user.target")
    _enable_unit(root, "cos-setup-reconcile.timer", "timers.target")
    _enable_unit(root, "cos-boot-assessment.service", "multi-user.target")
    _enable_unit(root, "cos-mark-good.service", "multi-user.target")
    _enable_unit(root, "cos-live-install.service", "multi-user.target")
    _mkdir(inside(root, "/usr/libexec/cos-checks"))


@feature("network", "DHCP on wired interfaces with systemd-networkd")
def _network(root: Path) -> None:
    for entry in data_path("network").iterdir():
        _write(root, f"/etc/systemd/network/{entry.name}", entry.read_text())
    if inside(root, "/usr/lib/systemd/system/systemd-networkd.service").exists():
        _enable_unit(root, "systemd-networkd.service", "multi-user.target")
        _enable_unit(root, "systemd-networkd.socket", "sockets.target")


@feature("completion", "bash and zsh completion of the cos command")
def _completion(root: Path) -> None:
    for name, dest in (
        ("cos.bash", "/usr/share/bash-completion/completions/cos"),
        ("_cos", "/usr/share/zsh/vendor-completions/_cos"),
    ):
        _write(root, dest, data_path("completion", name).read_text())


@feature("cloud-config", "/system/oem, where the image's own cloud-configs go")
def _cloud_config(root: Path) -> None:
    # No default documents: the layout keeps the machine-id and names the machine
    # (cos.system.identity), so a boot with no early cloud-config starts no Python.
    _mkdir(inside(root, "/system/oem"))


def _chroot_argv(root: Path, argv: list[str]) -> list[str]:
    return argv if root == Path("/") else ["chroot", str(root), *argv]


def rebuild_initrd(root: Path) -> None:
    """Build the initrd of the newest kernel and give both stable names in /boot."""
    kernel = require_kernel(root, "this image")
    initrd = f"/boot/initrd.img-{kernel.version}"
    _journal_path(inside(root, initrd))
    with step(f"Building the initrd for kernel {kernel.version}"):
        runner.run(
            _chroot_argv(
                root, ["dracut", "--force", "--no-hostonly", "--kver", kernel.version, initrd]
            )
        )
    inside(root, initrd).chmod(0o644)
    for name, target in (("vmlinuz", kernel.vmlinuz.name), ("initrd", Path(initrd).name)):
        link = inside(root, f"/boot/{name}")
        _journal_path(link)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)


def check_prerequisites(root: Path, selected: list[str]) -> None:
    """Before the first write: what the selected features need is in the tree."""
    if "immutable-rootfs" in selected:
        require_kernel(root, "this image")
        if not any(inside(root, p).exists() for p in ("/usr/bin/dracut", "/sbin/dracut")):
            raise ImageError(
                "this image has no dracut: cos init builds the initrd with it",
                hint="install dracut in the Containerfile before RUN cos init",
            )


def image_build_reason() -> str | None:
    """Why this looks like an image build (a container build or a chroot), or None.

    What the builders leave: `docker build` runs each RUN in a container with
    /.dockerenv; buildah and podman (`buildah bud`, `podman build`) create
    /run/.containerenv; systemd-nspawn and podman set $container. A chroot has a root
    other than PID 1's. A machine whose PID 1 is systemd is booted, not building,
    whatever else it has (a system container, or a host with a stray /.dockerenv)."""
    if _pid1() == "systemd":
        return None
    if Path("/run/.containerenv").exists() or Path("/.dockerenv").exists():
        return "container build"
    if os.environ.get("container"):  # noqa: SIM112 (the name container managers set)
        return "container build"
    try:
        a, b = os.stat("/"), os.stat("/proc/1/root/")
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            return "chroot"
    except OSError:
        return "chroot"  # no /proc or no access to PID 1's root: not a booted host
    return None


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip()
    except OSError:
        return ""
