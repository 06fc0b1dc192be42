"""The machine's identity at boot: a machine-id kept across reboots, a default hostname.

/etc is an ephemeral overlay, so without help every boot would get a new machine-id
(new DHCP leases, a new journal directory) and no hostname. The layout seeds both
once it is mounted: the machine-id lives on COS_PERSISTENT (`etc/machine-id` below
the persistent mount) and is copied into /etc; a system whose image sets no hostname
gets `cos-` and the machine-id's first six characters, recovery mode `recovery`.
Cloud-configs run later (the initramfs stage and after) and can set another name.

The boot's shell layout (/usr/libexec/cos-layout) does the same steps; tests hold the
two to the same result.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

from cos.fsutil import atomic_write, confine
from cos.log import log
from cos.system.installed import Mode

RECOVERY_HOSTNAME = "recovery"
HOSTNAME_PREFIX = "cos-"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return lines[0].strip() if lines else ""


def machine_id(mode: str, persistent_mount: str, keep: bool, root: Path) -> str:
    """The kept machine-id, made on the first boot and copied into /etc, when the
    persistent mount is writable (keep); otherwise what /etc has (recovery boots with
    its own, and without COS_PERSISTENT systemd makes a transient one)."""
    if mode == Mode.RECOVERY or not keep:
        return _first_line(confine(root, "/etc/machine-id"))
    kept = confine(root, f"{persistent_mount}/etc/machine-id")
    kept.parent.mkdir(parents=True, exist_ok=True)
    mid = _first_line(kept)
    if not re.fullmatch(r"[0-9a-f]{32}", mid):
        mid = uuid.uuid4().hex
        atomic_write(kept, f"{mid}\n", 0o444)
    atomic_write(confine(root, "/etc/machine-id"), f"{mid}\n", 0o444)
    return mid


def valid_hostname(name: str) -> bool:
    return _VALID.fullmatch(name) is not None


def hosts_naming(text: str, name: str) -> str:
    """/etc/hosts with its 127.0.0.1 line naming name (a first line when it has none)."""
    out, found = [], False
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "127.0.0.1":
            out.append(f"127.0.0.1 localhost {name}")
            found = True
        else:
            out.append(line.strip())
    if not found:
        out.insert(0, f"127.0.0.1 localhost {name}")
    return "\n".join(out) + "\n"


def set_hostname(name: str, root: Path) -> None:
    """/etc/hostname, the 127.0.0.1 line of /etc/hosts, and the kernel's name when
    root is the running system."""
    atomic_write(confine(root, "/etc/hostname"), f"{name}\n", 0o644)
    hosts = confine(root, "/etc/hosts")
    try:
        text = hosts.read_text(errors="replace")
    except OSError:
        text = ""
    atomic_write(hosts, hosts_naming(text, name), 0o644)
    if root == Path("/"):
        try:
            socket.sethostname(name)
        except OSError as exc:
            log.warning("cannot set the hostname %s: %s", name, exc)


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return True


def seed_identity(mode: str, persistent_mount: str, keep: bool, root: Path = Path("/")) -> None:
    """Never stops a boot: a failure is a warning, and the system comes up unnamed."""
    try:
        mid = machine_id(mode, persistent_mount, keep, root)
        if mode == Mode.RECOVERY:
            set_hostname(RECOVERY_HOSTNAME, root)
        elif mid and _empty(confine(root, "/etc/hostname")):
            name = HOSTNAME_PREFIX + mid[:6]
            if valid_hostname(name):
                set_hostname(name, root)
    except OSError as exc:
        log.warning("machine identity not set: %s", exc)
