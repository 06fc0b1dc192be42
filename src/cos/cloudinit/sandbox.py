"""Build-time hooks in a sandbox: an image's own cloud-configs, run on the build machine.

The image may be hostile. Its hook runs in a child with its own mount, PID, IPC and
UTS namespaces, and a network namespace without interfaces unless the config allows
the network. Before the stage runs, the child gives itself a root of its own and
pivots into it, so the build machine's filesystem is not there to be reached, even
by a step that leaves its chroot (`/proc/1/root`, a chroot escape):

* the tree, read-write, at its own path; its /proc (this PID namespace's), /dev
  (the minimal one below) and /sys (read-only) mounted in, as chroot hooks expect;
* read-only, at their own paths: /usr (and /bin, /lib… as links or binds), the
  Python running cos and cos itself, the hook's cloud-config files from outside the
  tree, and with the network /etc/resolv.conf, hosts, nsswitch.conf and /etc/ssl;
* fresh: /proc, /tmp, /run, an empty /etc, and a /dev holding null, zero, full,
  random, urandom and tty only (no disk of the build machine).

The stage then runs with capabilities that could undo this dropped from its bounding
set (mounting, device nodes, open_by_handle_at, modules, raw I/O, ptrace, network
administration, …), so no step, chrooted or not, regains them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import cos
from cos import run as runner
from cos.cloudinit.hooks import report, run_sources
from cos.errors import CosError, ExitCode
from cos.log import log, setup_logging

_ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # links or dirs at /
_NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl")
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# What a step must never have: each would reach past the sandbox's root or namespaces.
DROPPED_CAPS = (
    "sys_admin", "mknod", "dac_read_search", "sys_module", "sys_rawio", "sys_ptrace",
    "sys_time", "sys_boot", "net_admin", "bpf", "perfmon", "syslog", "mac_admin",
    "mac_override", "audit_control", "sys_pacct",
)  # fmt: skip
_COS_PATH = Path(cos.__file__).resolve().parents[1]  # the directory cos is imported from


def run_sandboxed_hook(name: str, sources: list[str], tree: Path, *, network: bool) -> None:
    """Run stage name over sources for tree in the sandbox; failures are reported."""
    if not sources:
        return
    newroot = Path(tempfile.mkdtemp(prefix="cos-hook-"))  # its root is mounted here
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
    argv += ["--ipc", "--uts", *([] if network else ["--net"])]
    argv += [sys.executable, "-m", "cos.cloudinit.sandbox", "enter", str(newroot)]
    argv += [str(Path(tree).absolute()), name, "network" if network else "-", *sources]
    try:
        res = runner.run(argv, check=False, timeout=3600, env={"PYTHONPATH": str(_COS_PATH)})
    finally:
        os.rmdir(newroot)  # empty: its mounts were the child's own
    for line in res.stderr.splitlines():
        log.info("  [%s] %s", name, line)
    if res.returncode != 0:
        log.warning("hook %s: exit %d (see above)", name, res.returncode)


# --- in the child -----------------------------------------------------------------------


def _mount(*args: str) -> None:
    runner.run(["mount", *args])


def _target(newroot: Path, path: Path) -> Path:
    return newroot / path.relative_to("/")


def _bind(newroot: Path, path: Path, *, writable: bool = False) -> None:
    """path at its own place under newroot (read-only unless writable). A writable
    path below one bound already (a tree under the build's working directory, which
    Python's path holds) is bound again on top: that bind is read-only and does not
    carry the tree's own mounts."""
    target = _target(newroot, path)
    if target.exists() and not writable:
        return
    if target.exists():
        pass
    elif path.is_dir():
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    if writable:
        _mount("--rbind", str(path), str(target))
    else:
        _mount("--bind", "-o", "ro,nosuid,nodev", str(path), str(target))


def _runtime() -> list[Path]:
    """What the running Python and cos are read from, outermost first."""
    found = {Path(sys.base_prefix), Path(sys.prefix), _COS_PATH}
    found.update(Path(p) for p in sys.path if p and os.path.isabs(p) and os.path.exists(p))
    out: list[Path] = []
    for p in sorted(found, key=lambda x: len(x.parts)):
        if not any(p.is_relative_to(q) for q in [*out, Path("/usr")]):
            out.append(p)
    return out


def _dev(newroot: Path) -> Path:
    dev = newroot / "dev"
    dev.mkdir()
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,noexec", "cos-dev", str(dev))
    for name in _DEVICES:
        if Path(f"/dev/{name}").exists():
            (dev / name).touch()
            _mount("--bind", f"/dev/{name}", str(dev / name))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        (dev / name).symlink_to(target)
    (dev / "stdout").symlink_to("/proc/self/fd/1")
    (dev / "stderr").symlink_to("/proc/self/fd/2")
    (dev / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "cos-shm", str(dev / "shm"))
    return dev


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def enter(newroot: Path, tree: Path, sources: list[Path], network: bool) -> None:
    """Make newroot the root of this (private) mount namespace, holding what the
    module docstring lists, and pivot into it; the old root is detached. Fresh mounts
    come first, so that binds below /tmp or /run land on them, not under them."""
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "cos-hook", str(newroot))
    (newroot / "proc").mkdir()
    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(newroot / "proc"))
    for name, mode in (("tmp", "1777"), ("run", "0755")):
        (newroot / name).mkdir()
        _mount("-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", f"cos-{name}", str(newroot / name))
    (newroot / "etc").mkdir()
    dev = _dev(newroot)
    for name in _ROOT_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            (newroot / name).symlink_to(os.readlink(host))
        elif host.is_dir():
            _bind(newroot, host)
    _bind(newroot, Path("/usr"))
    for path in _runtime():
        _bind(newroot, path)
    for name in _NETWORK_FILES if network else ():
        if os.path.exists(name):
            _bind(newroot, Path(name))
    for src in sources:
        if src.exists() and not src.absolute().is_relative_to(tree):
            _bind(newroot, src.absolute())
    _bind(newroot, tree, writable=True)
    inner = _target(newroot, tree)
    if _real_dir(inner / "proc"):
        _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(inner / "proc"))
    if _real_dir(inner / "dev"):
        _mount("--rbind", str(dev), str(inner / "dev"))
    if _real_dir(inner / "sys"):
        _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(inner / "sys"))
    os.chdir(newroot)
    os.mkdir(".old")
    runner.run(["pivot_root", ".", ".old"])
    os.chdir("/")
    runner.run(["umount", "-l", "/.old"])
    os.rmdir("/.old")


def main(argv: list[str]) -> int:
    """`enter NEWROOT TREE STAGE NET SOURCES…`: build the root and pivot (with every
    capability), then run the stage in a child without the dropped ones.
    `stage TREE STAGE SOURCES…`: that child."""
    setup_logging()
    try:
        if argv[0] == "enter":
            newroot, tree, stage, net, *sources = argv[1:]
            enter(Path(newroot), Path(tree), [Path(s) for s in sources], net == "network")
            drop = ",".join(f"-{c}" for c in DROPPED_CAPS)
            child = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]
            child += [sys.executable, "-m", "cos.cloudinit.sandbox", "stage", tree, stage]
            env = {"PYTHONPATH": str(_COS_PATH)}
            return runner.run([*child, *sources], check=False, capture=False, env=env).returncode
        tree, stage, *sources = argv[1:]
    except CosError as exc:
        log.error("sandbox: %s", exc)
        return int(exc.exit_code)
    except OSError as exc:
        log.error("sandbox: %s", exc)
        return int(ExitCode.TOOL)
    summary, loaded, _ = run_sources(stage, sources, Path(tree))
    report(stage, loaded, summary)
    return int(ExitCode.STAGE) if summary.failed or loaded.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
