"""Typed configuration, loaded and validated before anything touches a disk.

Sources, later ones winning: /etc/cos/config.yaml, /etc/cos/config.d/*.yaml (lexical
order), COS_* environment variables, then command-line flags. YAML keys use the
kebab-case spelling Elemental users know (``max-snaps``); a nested key is reached
from the environment with a double underscore: ``COS_PARTITIONS__STATE=4096``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform as platform_module
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cos.errors import ConfigError

DEFAULT_CONFIG_DIR = Path("/etc/cos")
_LABEL = re.compile(r"[A-Za-z0-9_-]+")


def doc(text: str) -> dict[str, str]:
    """Field metadata holding the description docs/config.md shows for a key."""
    return {"doc": text}


@dataclass
class Partitions:
    """Partition sizes in MiB; 0 means the rest of the disk (persistent only)."""

    bios: int = field(default=1, metadata=doc("BIOS boot partition holding GRUB's core image"))
    efi: int = field(default=64, metadata=doc("EFI system partition (FAT32, at least 34)"))
    oem: int = field(default=64, metadata=doc("COS_OEM: grubenv and cloud-configs"))
    recovery: int = field(
        default=4096, metadata=doc("COS_RECOVERY: the recovery system, kernel and initrd")
    )
    state: int = field(default=8192, metadata=doc("COS_STATE: the snapshots and the layer store"))
    persistent: int = field(
        default=0, metadata=doc("COS_PERSISTENT, always last; 0 takes the rest of the disk")
    )

    def validate(self, where: str) -> None:
        if self.bios < 1:
            raise ConfigError(f"{where}: partitions.bios must be at least 1 MiB")
        if self.efi < 34:
            raise ConfigError(
                f"{where}: partitions.efi = {self.efi} MiB is too small for a FAT32 ESP",
                hint="the ESP needs at least 34 MiB",
            )
        for name in ("oem", "recovery", "state"):
            if getattr(self, name) < 16:
                raise ConfigError(
                    f"{where}: partitions.{name} = {getattr(self, name)} MiB is too small",
                    hint="each partition needs at least 16 MiB",
                )
        if self.persistent != 0 and self.persistent < 16:
            raise ConfigError(
                f"{where}: partitions.persistent must be 0 (rest of disk) or at least 16 MiB",
            )


@dataclass
class Labels:
    """Filesystem labels of the partitions; GRUB and the initrd find them by these.

    They are fixed at install (build-disk writes them to grub_oem_env and state.yaml),
    so change them before building a disk, not on an installed system."""

    efi: str = field(default="COS_GRUB", metadata=doc("ESP (FAT label: up to 11 characters)"))
    oem: str = field(default="COS_OEM", metadata=doc("OEM partition"))
    recovery: str = field(default="COS_RECOVERY", metadata=doc("recovery partition"))
    state: str = field(default="COS_STATE", metadata=doc("state partition"))
    persistent: str = field(default="COS_PERSISTENT", metadata=doc("persistent partition"))

    def validate(self, where: str) -> None:
        for name in ("efi", "oem", "recovery", "state", "persistent"):
            value = getattr(self, name)
            limit = 11 if name == "efi" else 16  # FAT and ext label sizes
            if not _LABEL.fullmatch(value) or len(value) > limit:
                raise ConfigError(
                    f"{where}: labels.{name} {value!r} is not a valid filesystem label",
                    hint=f"use up to {limit} characters from A-Z 0-9 _ -",
                )


@dataclass
class Layout:
    """Which paths of the read-only system are writable, and how."""

    ephemeral: list[str] = field(
        default_factory=lambda: ["/etc", "/var", "/srv"],
        metadata=doc("overlays on a tmpfs: writable, and reset at every boot"),
    )
    ephemeral_size: str = field(
        default="25%",
        metadata=doc(
            "size of that tmpfs (bytes, k/m/g or % of RAM); at boot the initrd mounts it"
            " first, with the size of `cos.overlay=tmpfs:SIZE` (default 25%), and that wins"
        ),
    )
    persistent: list[str] = field(
        default_factory=lambda: ["/etc/ssh", "/etc/systemd", "/home", "/opt", "/root", "/var/log"],
        metadata=doc(
            "overlays whose changes are kept on COS_PERSISTENT (`.state/` below"
            " persistent-mount); not mounted in recovery, in RAM on live media"
        ),
    )
    persistent_bind: list[str] = field(
        default_factory=lambda: [
            "/var/lib/containerd",
            "/var/lib/containers",
            "/var/lib/rancher",
            "/var/lib/kubelet",
            "/var/lib/longhorn",
            "/var/lib/cni",
        ],
        metadata=doc(
            "plain directories on COS_PERSISTENT (`.state/<path>.bind`) bind-mounted in"
            " place: container runtimes can stack their own overlays there, which they"
            " cannot on an overlay; seeded with the image's content on first boot"
        ),
    )
    oem_mount: str = field(default="/oem", metadata=doc("where COS_OEM is mounted"))
    persistent_mount: str = field(
        default="/usr/local", metadata=doc("where COS_PERSISTENT is mounted")
    )

    def validate(self, where: str) -> None:
        paths = [*self.ephemeral, *self.persistent, *self.persistent_bind]
        for p in [*paths, self.oem_mount, self.persistent_mount]:
            if not p.startswith("/") or ".." in Path(p).parts or p == "/":
                raise ConfigError(
                    f"{where}: layout path {p!r} must be an absolute path below /",
                )


class Filesystem(StrEnum):
    """Filesystems cos makes snapshot and recovery images with."""

    EXT2 = "ext2"
    EXT4 = "ext4"
    SQUASHFS = "squashfs"


class SnapshotterKind(StrEnum):
    """How snapshots are stored on COS_STATE (the backend that reads and writes them)."""

    LOOP = "loop"  # a whole ext image per snapshot
    LAYERS = "layers"  # each image layer once, stacked by overlayfs


DEFAULT_KEPT = {SnapshotterKind.LOOP: 2, SnapshotterKind.LAYERS: 4}
SNAPSHOT_FILESYSTEMS = (Filesystem.EXT2, Filesystem.EXT4)
RECOVERY_FILESYSTEMS = (Filesystem.SQUASHFS, Filesystem.EXT2, Filesystem.EXT4)


@dataclass(frozen=True)
class Trust:
    """The keys an image's signature is checked with: the signer's, and optionally the
    transparency log's whose entry must prove it published the signature."""

    key: Path
    log_key: Path | None = None


@dataclass
class Config:
    """Settings of every cos command (/etc/cos/config.yaml and config.d)."""

    debug: bool = field(default=False, metadata=doc("show commands run and tracebacks"))
    tls_verify: bool = field(
        default=True,
        metadata=doc("verify the registry's TLS certificate; false for plain HTTP or self-signed"),
    )
    max_snaps: int = field(
        default=0,
        metadata=doc(
            "snapshots kept on COS_STATE (the active one and max-snaps - 1 to go back to);"
            " 0: the snapshotter's default, 2 for loop (each a whole image), 4 for layers"
            " (they share their layers)"
        ),
    )
    snapshotter: SnapshotterKind = field(
        default=SnapshotterKind.LAYERS,
        metadata=doc(
            "how snapshots are stored: layers (each image layer once, shared by the"
            " snapshots; an upgrade writes only the layers it adds) or loop (a whole ext"
            " image each). A loop system moves to layers with its next upgrade and keeps"
            " its old snapshots; loop keeps it on loop"
        ),
    )
    snapshot_fs: Filesystem = field(
        default=Filesystem.EXT4, metadata=doc("filesystem of snapshot images: ext4 or ext2")
    )
    recovery_fs: Filesystem = field(
        default=Filesystem.SQUASHFS,
        metadata=doc("filesystem of recovery.img: squashfs, ext4 or ext2"),
    )
    grub_timeout: int = field(
        default=3, metadata=doc("seconds the GRUB menu waits (0-600); written to grub_oem_env")
    )
    extra_cmdline: str = field(
        default="", metadata=doc("appended to the kernel command line of every boot entry")
    )
    cache_dir: str = field(
        default="/var/cache/cos",
        metadata=doc(
            "cache of images pulled by build-disk, build-iso, install, pull-image and inspect"
        ),
    )
    upgrade_system: str = field(
        default="",
        metadata=doc(
            "image `cos upgrade` pulls when given no --system (a moving tag works as a"
            " channel); empty: the source state.yaml recorded for the active snapshot"
        ),
    )
    boot_attempts: int = field(
        default=3,
        metadata=doc(
            "boots (1-9) a freshly upgraded snapshot gets to confirm itself before GRUB"
            " falls back to the previous one"
        ),
    )
    trial_timeout: int = field(
        default=600,
        metadata=doc(
            "seconds a trial boot has to confirm itself (mark-good after multi-user); a"
            " boot that hangs or fails its checks is then rebooted, so GRUB counts its"
            " tries down and falls back; 0: wait forever"
        ),
    )
    build_hooks_network: bool = field(
        default=False,
        metadata=doc(
            "give build-time hooks run on the build machine (build-disk's"
            " after-disk-chroot, from the image's /system/oem) a network; without it they"
            " run in a network namespace of their own with no interfaces"
        ),
    )
    cloud_init_paths: list[str] = field(
        default_factory=list,
        metadata=doc(
            "more cloud-config files or directories, read after /system/oem, /oem and"
            " /usr/local/cloud-config (stages and hooks)"
        ),
    )
    verify: bool = field(
        default=False,
        metadata=doc(
            "refuse every image (upgrades included) unless a cosign signature made with"
            " cosign-key vouches for its digest"
        ),
    )
    cosign_key: str = field(
        default="", metadata=doc("public key (cosign.pub) signatures are checked with")
    )
    tlog_key: str = field(
        default="",
        metadata=doc(
            "public key of a transparency log (Rekor's); with verify, a signature counts only"
            " in a bundle whose log entry proves, offline, that this log holds it. Empty: the"
            " log is not checked (cosign's --insecure-ignore-tlog)"
        ),
    )
    platform: str = field(
        default="", metadata=doc("OS/ARCH picked from multi-platform images; empty: this machine's")
    )
    partitions: Partitions = field(default_factory=Partitions)
    labels: Labels = field(default_factory=Labels)
    layout: Layout = field(default_factory=Layout)

    def kept_snapshots(self, kind: SnapshotterKind) -> int:
        """max-snaps, or the default of the backend kind when it is not set."""
        return self.max_snaps or DEFAULT_KEPT[kind]

    def validate(self, where: str = "config") -> None:
        if self.max_snaps < 0:
            raise ConfigError(
                f"{where}: max-snaps must be ≥ 1, or 0 for the snapshotter's default"
                f" (got {self.max_snaps})"
            )
        if self.snapshot_fs not in SNAPSHOT_FILESYSTEMS:
            raise ConfigError(
                f"{where}: snapshot-fs {self.snapshot_fs!r} is not supported",
                hint="use ext2 or ext4",
            )
        if self.recovery_fs not in RECOVERY_FILESYSTEMS:
            raise ConfigError(
                f"{where}: recovery-fs {self.recovery_fs!r} is not supported",
                hint="use squashfs, ext2 or ext4",
            )
        if not 1 <= self.boot_attempts <= 9:
            raise ConfigError(
                f"{where}: boot-attempts must be between 1 and 9 (got {self.boot_attempts})"
            )
        if self.trial_timeout and not 30 <= self.trial_timeout <= 86400:
            raise ConfigError(
                f"{where}: trial-timeout must be 0 or between 30 and 86400 seconds"
                f" (got {self.trial_timeout})"
            )
        if not 0 <= self.grub_timeout <= 600:
            raise ConfigError(f"{where}: grub-timeout must be between 0 and 600 seconds")
        if self.verify and not self.cosign_key:
            raise ConfigError(
                f"{where}: verify is true but no cosign-key is set",
                hint="set cosign-key: /etc/cos/cosign.pub (or pass --cosign-key PATH)",
            )
        if self.platform and not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/v[0-9]+)?", self.platform):
            raise ConfigError(
                f"{where}: platform {self.platform!r} is not OS/ARCH",
                hint="e.g. linux/amd64 or linux/arm64",
            )
        self.partitions.validate(where)
        self.labels.validate(where)
        self.layout.validate(where)

    def signature_key(self) -> Trust | None:
        """What an image's signature must check out against (None: not required)."""
        if not self.verify:
            return None
        return Trust(Path(self.cosign_key), Path(self.tlog_key) if self.tlog_key else None)

    def arch(self) -> str:
        """OCI architecture to pick from an image index."""
        if self.platform:
            return self.platform.split("/")[1]
        machine = platform_module.machine()
        return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


T = TypeVar("T")


def _key(name: str) -> str:
    return name.replace("_", "-")


_INT_BOUND = 2**63  # no setting needs more; bigger ones only overflow later


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge number"
    return text if len(text) <= 60 else text[:57] + "…"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and for env strings, convert) a value against a field type."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type")  # no unions in the models
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = int(value)
        if number is None:
            raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
        if abs(number) >= _INT_BOUND:
            raise ConfigError(f"{where}: {_short(number)} is out of range")
        return number
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)
            raise ConfigError(
                f"{where}: {value!r} is not supported", hint=f"use one of: {choices}"
            ) from None
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp!r}")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    known = {_key(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        norm = str(key).replace("_", "-")
        if norm not in known:
            close = [k for k in known if k.startswith(norm[:3])]
            raise ConfigError(
                f"{where}: unknown key {key!r}",
                hint=f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}",
            )
        f = known[norm]
        kwargs[f.name] = _coerce(value, hints[f.name], f"{where}.{norm}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        k = str(k).replace("_", "-")
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file holding a mapping (or nothing); errors carry file:line:column."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{loc}: invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    except ValueError as exc:  # a value the YAML types cannot hold, e.g. a 5000-digit integer
        raise ConfigError(f"{path}: invalid YAML ({str(exc).split(';')[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """COS_* variables naming a config key. Others (other tools also use the COS_
    prefix) are ignored, so they cannot break every command."""
    known = {_key(f.name) for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for name, value in sorted(env.items()):
        if not name.startswith("COS_") or name == "COS_CONFIG_DIR":
            continue
        path = [p.lower().replace("_", "-") for p in name[4:].split("__")]
        if path[0] not in known:
            logging.getLogger("cos").debug("ignoring %s: not a cos setting", name)
            continue
        cur = out
        for p in path[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"environment: {name} conflicts with COS_{p.upper()}")
            cur = nxt
        cur[path[-1]] = value
    return out


def load_config(
    config_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge every source in order and validate the result."""
    env = os.environ if env is None else env
    if config_dir is None:
        config_dir = Path(env.get("COS_CONFIG_DIR", DEFAULT_CONFIG_DIR))
    merged: dict[str, Any] = {}
    sources = []
    main = config_dir / "config.yaml"
    if main.is_file():
        sources.append(main)
    dropins = config_dir / "config.d"
    if dropins.is_dir():
        try:
            sources += sorted(p for p in dropins.iterdir() if p.suffix in (".yaml", ".yml"))
        except OSError as exc:
            raise ConfigError(f"{dropins}: cannot list ({exc.strerror})") from exc
    for src in sources:
        data = read_yaml_mapping(src)
        _build(Config, data, str(src))  # validate each file on its own, for a precise location
        merged = _merge(merged, data)
    env_data = _env_overrides(env)
    if env_data:
        _build(Config, env_data, "environment (COS_*)")
        merged = _merge(merged, env_data)
    if flags:
        merged = _merge(merged, {k: v for k, v in flags.items() if v is not None})
    cfg = _build(Config, merged, "config")
    cfg.validate()
    return cfg
