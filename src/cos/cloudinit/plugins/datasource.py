"""datasource: fetch user-data from where the platform provides it and store it for the
next stages (default /run/config/userdata.yaml).

Providers: file (needs `path`), cdrom / config-drive (a filesystem labelled cidata or
config-2, NoCloud and OpenStack layouts), and the metadata services of aws, gcp,
openstack, digitalocean and hetzner. Disk providers are tried first; the first
provider that returns data wins. Under --root the disk providers are skipped: the
machine's devices belong to the host, not to the target tree.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cos.cloudinit.plugins.base import Context, PluginError, log, write_file
from cos.errors import ToolError

METADATA = "http://169.254.169.254"
# provider → (url, headers); a module-level table so a test can point it elsewhere.
ENDPOINTS: dict[str, tuple[str, dict[str, str]]] = {
    "aws": (f"{METADATA}/latest/user-data", {}),
    "openstack": (f"{METADATA}/openstack/latest/user_data", {}),
    "digitalocean": (f"{METADATA}/metadata/v1/user-data", {}),
    "hetzner": (f"{METADATA}/hetzner/v1/userdata", {}),
    "gcp": (
        "http://metadata.google.internal/computeMetadata/v1/instance/attributes/user-data",
        {"Metadata-Flavor": "Google"},
    ),
}
DISK_LABELS = {"cdrom": ("cidata", "CIDATA"), "config-drive": ("config-2", "CONFIG-2")}
DISK_FILES = ("user-data", "openstack/latest/user_data")


def _http(provider: str) -> Callable[[dict[str, Any], Context], bytes | None]:
    def fetch(spec: dict[str, Any], ctx: Context) -> bytes | None:
        url, headers = ENDPOINTS[provider]
        try:
            return ctx.fetch(url, timeout=5, headers=headers)
        except PluginError as exc:
            log.debug("datasource %s: %s", provider, exc)
            return None

    return fetch


def _file(spec: dict[str, Any], ctx: Context) -> bytes | None:
    if not spec.get("path"):
        raise PluginError("the file provider needs datasource.path")
    text = ctx.read_text(spec["path"])
    return text.encode() if text else None


def _disk(kind: str) -> Callable[[dict[str, Any], Context], bytes | None]:
    def fetch(spec: dict[str, Any], ctx: Context) -> bytes | None:
        if not ctx.live:
            log.warning("datasource %s: only on the running system (not --root); skipped", kind)
            return None
        for label in DISK_LABELS[kind]:
            r = ctx.tool(["blkid", "-o", "device", "-t", f"LABEL={label}"], check=False)
            dev = r.stdout.split()[0] if r.returncode == 0 and r.stdout.strip() else None
            if dev is None:
                continue
            with tempfile.TemporaryDirectory(prefix="cos-datasource-") as mnt:
                try:
                    ctx.tool(["mount", "-o", "ro", dev, mnt])
                except ToolError:
                    continue
                try:
                    for name in DISK_FILES:
                        f = Path(mnt) / name
                        if f.is_file() and not f.is_symlink():
                            return f.read_bytes()
                finally:
                    ctx.tool(["umount", mnt], check=False)
        return None

    return fetch


PROVIDERS: dict[str, Callable[[dict[str, Any], Context], bytes | None]] = {
    "file": _file,
    "cdrom": _disk("cdrom"),
    "config-drive": _disk("config-drive"),
    **{name: _http(name) for name in ENDPOINTS},
}


def _userdata_name(spec: dict[str, Any]) -> str:
    """A plain file name: the user data goes into the directory, nowhere else."""
    name = spec.get("userdata_name") or "userdata.yaml"
    if "/" in name or name in (".", "..") or "\0" in name:
        raise PluginError(f"userdata_name {name!r} must be a file name, not a path")
    return str(name)


def datasource(step: dict[str, Any], ctx: Context) -> None:
    spec = step["datasource"]
    name = _userdata_name(spec)
    wanted = list(dict.fromkeys(spec.get("providers") or []))
    if not wanted:
        return
    unknown = [p for p in wanted if p not in PROVIDERS]
    if unknown:
        log.warning(
            "datasource: skipping unknown provider(s) %s (known: %s)",
            ", ".join(unknown),
            ", ".join(PROVIDERS),
        )
        wanted = [p for p in wanted if p in PROVIDERS]
        if not wanted:
            raise PluginError(f"no known datasource provider in {', '.join(unknown)}")
    if not ctx.act(f"fetch user-data from {', '.join(wanted)}"):
        return
    order = sorted(wanted, key=lambda p: p not in ("cdrom", "config-drive", "file"))
    for provider in order:
        data = PROVIDERS[provider](spec, ctx)
        if data:
            directory = (
                spec.get("path") if provider != "file" and spec.get("path") else "/run/config"
            )
            target = ctx.path(f"{directory.rstrip('/')}/{name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            write_file(target, data, 0o600)
            return
    raise PluginError(f"no user-data from {', '.join(wanted)}")
