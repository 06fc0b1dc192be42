"""datasource: fetch user-data from where the platform provides it and store it for the
next stages (default /run/config/userdata.yaml).

Providers: file (needs `path`), cdrom / config-drive (a filesystem labelled cidata or
config-2, NoCloud and OpenStack layouts), vmware (guestinfo through vmware-rpctool),
and the metadata services of aws, gcp, openstack, digitalocean, hetzner, azure,
packet (Equinix Metal), vultr, scaleway and metaldata. Local providers are tried
first; the first provider that returns data wins. Under --root the disk and vmware
providers are skipped: the machine's devices belong to the host, not to the target.
"""

from __future__ import annotations

import base64
import gzip
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
    "azure": (
        f"{METADATA}/metadata/instance/compute/userData?api-version=2021-01-01&format=text",
        {"Metadata": "true"},
    ),
    "packet": ("https://metadata.platformequinix.com/userdata", {}),
    "vultr": (f"{METADATA}/latest/user-data", {}),
    "scaleway": ("http://169.254.42.42/user_data/cloud-init", {"Accept": "text/plain"}),
    "metaldata": (f"{METADATA}/userdata", {}),
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


# Azure returns the user data base64-encoded; Scaleway answers only requests from a
# privileged source port (proof that root asked).
BASE64 = {"azure"}
LOW_PORT = {"scaleway"}


def _http(provider: str) -> Callable[[dict[str, Any], Context], bytes | None]:
    def fetch(spec: dict[str, Any], ctx: Context) -> bytes | None:
        url, headers = ENDPOINTS[provider]
        try:
            data = ctx.fetch(url, timeout=5, headers=headers, low_port=provider in LOW_PORT)
        except PluginError as exc:
            log.debug("datasource %s: %s", provider, exc)
            return None
        if provider in BASE64:
            try:
                data = base64.b64decode(data, validate=False)
            except ValueError:
                return None
        return data

    return fetch


def _vmware(spec: dict[str, Any], ctx: Context) -> bytes | None:
    """guestinfo.userdata (and .encoding: base64, gzip+base64) from the hypervisor."""
    if not ctx.live:
        log.warning("datasource vmware: only on the running system (not --root); skipped")
        return None

    def info(key: str) -> str | None:
        try:
            r = ctx.tool(["vmware-rpctool", f"info-get guestinfo.{key}"], check=False)
        except ToolError:
            return None
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None

    data = info("userdata")
    if data is None:
        return None
    encoding = (info("userdata.encoding") or "").lower()
    try:
        if encoding in ("base64", "b64"):
            return base64.b64decode(data)
        if encoding in ("gzip+base64", "gz+b64", "gz+base64", "gzip+b64"):
            return gzip.decompress(base64.b64decode(data))
    except (ValueError, OSError, EOFError) as exc:
        raise PluginError(f"vmware: guestinfo.userdata is not valid {encoding}: {exc}") from exc
    return data.encode()


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
    "vmware": _vmware,
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
    order = sorted(wanted, key=lambda p: p not in ("cdrom", "config-drive", "file", "vmware"))
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
