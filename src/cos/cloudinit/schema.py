"""The yip document schema: one declarative table that validates documents and
exports JSON Schema for editors.

Lenient like yip, loud about it: every key yip knows is accepted with yip's types
(including its quirks, such as `ownerstring` and octal `permissions`); an unknown key
is a located warning with a "did you mean" hint and is left out, so a typo in one
key does not stop the rest of a step (yip ignores such keys silently). A value of
the wrong type is an error: yip refuses such a document too. `--strict` and
`--validate` turn the warnings into errors.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from cos.cloudinit.yamlmarks import Mark, MarkedDict, MarkedList


@dataclass
class SchemaError:
    mark: Mark | None
    path: str  # key path, e.g. stages.boot[0].files[1].permissions
    message: str
    hint: str = ""
    warning: bool = False  # an ignored key: reported, the document still runs

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        hint = f" ({self.hint})" if self.hint else ""
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}{hint}"


class T:
    json: dict[str, Any] = {}

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        raise NotImplementedError


class Scalar(T):
    def __init__(self, kind: str, doc: str = "") -> None:
        self.kind, self.doc = kind, doc
        self.json = {"type": {"str": "string", "int": "integer", "bool": "boolean"}[kind]}
        if doc:
            self.json = {**self.json, "description": doc}

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        if self.kind == "str":
            # yip reads YAML scalars into string fields as text: true, 1000, 1.5 all work.
            if v is None:
                return ""
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, dict | list):
                errs.append(SchemaError(mark, path, f"expected a string, got {_kind(v)}"))
                return None
            return str(v)
        if self.kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                hint = "write octal modes unquoted, e.g. 0644" if isinstance(v, str) else ""
                errs.append(SchemaError(mark, path, f"expected an integer, got {_kind(v)}", hint))
                return None
            return v
        if not isinstance(v, bool):
            errs.append(SchemaError(mark, path, f"expected true or false, got {_kind(v)}"))
            return None
        return v


class ListOf(T):
    def __init__(self, item: T) -> None:
        self.item = item
        self.json = {"type": "array", "items": item.json}

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        if v is None:
            return []
        if not isinstance(v, list):
            errs.append(SchemaError(mark, path, f"expected a list, got {_kind(v)}"))
            return []
        marks = v.item_marks if isinstance(v, MarkedList) else [mark] * len(v)
        return [self.item.check(x, f"{path}[{i}]", marks[i], errs) for i, x in enumerate(v)]


class MapOf(T):
    def __init__(self, value: T, keys: tuple[str, ...] | None = None) -> None:
        self.value, self.keys = value, keys
        self.json = {"type": "object", "additionalProperties": value.json}
        if keys:
            self.json = {
                "type": "object",
                "properties": {k: value.json for k in keys},
                "additionalProperties": False,
            }

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            errs.append(SchemaError(mark, path, f"expected a mapping, got {_kind(v)}"))
            return {}
        out = {}
        for k, x in v.items():
            kmark, vmark = _marks(v, k, mark)
            if self.keys and k not in self.keys:
                errs.append(
                    SchemaError(
                        kmark,
                        f"{path}.{k}",
                        "unknown key",
                        _did_you_mean(str(k), self.keys),
                        warning=True,
                    )
                )
                continue
            out[str(k)] = self.value.check(x, f"{path}.{k}", vmark, errs)
        return out


class Obj(T):
    """A mapping with known fields; `foreign` names keys other tools use in the same
    block (Kairos, Elemental), which get an explanation instead of a spelling hint."""

    def __init__(
        self, title: str, fields: dict[str, T], doc: str = "", foreign: dict[str, str] | None = None
    ) -> None:
        self.title, self.fields, self.foreign = title, fields, foreign or {}
        self.json = {
            "type": "object",
            "title": title,
            "additionalProperties": False,
            "properties": {k: t.json for k, t in fields.items()},
        }
        if doc:
            self.json["description"] = doc

    def unknown_hint(self, key: str) -> str:
        return self.foreign.get(key) or _did_you_mean(key, self.fields)

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            errs.append(
                SchemaError(mark, path, f"expected a mapping ({self.title}), got {_kind(v)}")
            )
            return {}
        out: dict[str, Any] = {}
        for k, x in v.items():
            kmark, vmark = _marks(v, k, mark)
            t = self.fields.get(str(k))
            sub = f"{path}.{k}" if path else str(k)
            if t is None:
                errs.append(
                    SchemaError(
                        kmark,
                        sub,
                        f"unknown key in {self.title}",
                        self.unknown_hint(str(k)),
                        warning=True,
                    )
                )
                continue
            out[str(k)] = t.check(x, sub, vmark, errs)
        return out


class Doc(T):
    """A field's type with the description editors and docs/cloud-config.md show."""

    def __init__(self, inner: T, doc: str) -> None:
        self.inner, self.doc = inner, doc
        self.json = {**inner.json, "description": doc}

    def check(self, v: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> Any:
        return self.inner.check(v, path, mark, errs)


def _marks(v: dict[Any, Any], key: Any, default: Mark | None) -> tuple[Mark | None, Mark | None]:
    """Where a mapping's key and its value are (the mapping's own mark when unknown)."""
    if isinstance(v, MarkedDict):
        return v.key_marks.get(key, default), v.value_marks.get(key, default)
    return default, default


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: f"the string {v!r}"}.get(
        type(v),
        "a list"
        if isinstance(v, list)
        else "a mapping"
        if isinstance(v, dict)
        else type(v).__name__,
    )


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


S, INT, B = Scalar("str"), Scalar("int"), Scalar("bool")
STRS = ListOf(S)
STRMAP = MapOf(S)

MODE = Doc(INT, "mode, written as an unquoted octal number (0644)")
OWNER = Doc(INT, "numeric owner uid")
GROUP = Doc(INT, "numeric group gid")
OWNERSTRING = Doc(S, "`user` or `user:group`, resolved in the target (wins over owner/group)")

FILE = Obj(
    "file",
    {
        "path": Doc(S, "absolute path; missing parent directories are created"),
        "permissions": MODE,
        "owner": OWNER,
        "group": GROUP,
        "content": Doc(S, "the content (templated)"),
        "encoding": Doc(S, "how content is encoded: b64/base64, gz/gzip, gz+b64/gz+base64"),
        "ownerstring": OWNERSTRING,
    },
    doc="A file written atomically.",
)
DOWNLOAD = Obj(
    "download",
    {
        "path": Doc(S, "file to write"),
        "url": Doc(S, "http(s) URL"),
        "timeout": Doc(INT, "seconds (default 60)"),
        "permissions": MODE,
        "owner": OWNER,
        "group": GROUP,
        "ownerstring": OWNERSTRING,
    },
    doc="A file fetched from a URL.",
)
DIRECTORY = Obj(
    "directory",
    {
        "path": Doc(S, "absolute path; parents are created"),
        "permissions": MODE,
        "owner": OWNER,
        "group": GROUP,
    },
    doc="A directory (created before the files of the same step).",
)
USER = Obj(
    "user",
    {
        "name": Doc(S, "accepted for yip compatibility; the key of the users map is the name"),
        "passwd": Doc(S, "password hash (crypt format, e.g. $6$…); a plain text is hashed"),
        "ssh_authorized_keys": Doc(STRS, "keys, or `github:USER` / `gitlab:USER`"),
        "gecos": S,
        "homedir": S,
        "no_create_home": B,
        "primary_group": S,
        "groups": Doc(STRS, "supplementary groups (groups that do not exist are skipped)"),
        "no_user_group": B,
        "system": Doc(B, "a system account (uid below 1000)"),
        "no_log_init": B,
        "shell": S,
        "lock_passwd": B,
        "uid": S,
    },
    doc="A user, created when missing; of an existing user only the password is updated.",
)
ENTITY = Obj(
    "entity",
    {
        "path": Doc(S, "the database file (default from the kind: /etc/passwd, /etc/group, …)"),
        "entity": Doc(S, "YAML text with `kind: user|group|shadow|gshadow` and its fields"),
    },
    doc="A line of /etc/passwd, group, shadow or gshadow.",
)
DNS = Obj(
    "dns",
    {
        "nameservers": STRS,
        "search": STRS,
        "options": STRS,
        "path": Doc(S, "default /etc/resolv.conf"),
    },
    doc="resolv.conf content.",
)
SYSTEMCTL = Obj(
    "systemctl",
    {
        "enable": STRS,
        "disable": STRS,
        "start": STRS,
        "mask": STRS,
        "overrides": ListOf(
            Obj(
                "override",
                {
                    "service": Doc(S, "unit name (.service when no suffix)"),
                    "name": Doc(S, "drop-in file name (default override-yip.conf)"),
                    "content": Doc(S, "drop-in content"),
                },
            )
        ),
    },
    doc="Unit state changes.",
)
DATASOURCE = Obj(
    "datasource",
    {
        "providers": Doc(
            STRS,
            "file, cdrom, config-drive, vmware, aws, gcp, openstack, digitalocean, hetzner,"
            " azure, packet, vultr, scaleway, metaldata; local ones first, the first that"
            " returns data wins",
        ),
        "path": Doc(
            S,
            "the file provider: file to read; others: directory to write to (default /run/config)",
        ),
        "userdata_name": Doc(S, "file name of the user data written (default userdata.yaml)"),
    },
    doc="Fetch user data from a cloud metadata service or a config drive.",
)
LAYOUT = Obj(
    "layout",
    {
        "device": Obj(
            "device",
            {
                "label": Doc(S, "filesystem label of a partition of the disk"),
                "path": Doc(S, "the disk's device path"),
                "init_disk": B,
                "disk_name": S,
            },
        ),
        "expand_partition": Obj(
            "expand_partition", {"size": Doc(INT, "MiB; 0 = the rest of the disk")}
        ),
        "add_partitions": ListOf(
            Obj(
                "partition",
                {
                    "fsLabel": S,
                    "size": Doc(INT, "MiB; 0 = the rest of the disk"),
                    "pLabel": Doc(S, "GPT partition name"),
                    "filesystem": Doc(S, "default ext4"),
                    "bootable": B,
                },
            )
        ),
    },
    doc="Grow the last partition and add partitions (labels that exist are skipped).",
)
GIT = Obj(
    "git",
    {
        "url": S,
        "path": S,
        "branch": S,
        "branch_only": B,
        "auth": Obj(
            "auth", {"username": S, "password": S, "private_key": S, "insecure": B, "public_key": S}
        ),
    },
)
PACKAGES = Obj("packages", {"install": STRS, "remove": STRS, "refresh": B, "upgrade": B})

STEP = Obj(
    "step",
    {
        "name": Doc(S, "the step's name (in logs, and for `after`)"),
        "after": Doc(ListOf(Obj("after", {"name": S})), "run after the named steps"),
        "if": Doc(S, "shell condition (templated); the step runs when it exits 0"),
        "node": Doc(S, "regular expression the hostname must match"),
        "only_os": Doc(S, "regular expression os-release PRETTY_NAME must match"),
        "only_os_version": Doc(S, "regular expression os-release VERSION_ID must match"),
        "only_arch": Doc(S, "regular expression the architecture (amd64, arm64…) must match"),
        "only_service_manager": Doc(S, "systemd or openrc"),
        "if_files": Doc(
            MapOf(STRS, keys=("any", "all", "none")),
            "paths of which any / all / none must exist",
        ),
        "commands": Doc(STRS, "shell commands (templated), each run with /bin/sh -c, in order"),
        "files": Doc(ListOf(FILE), "files to write"),
        "downloads": Doc(ListOf(DOWNLOAD), "files to fetch"),
        "directories": Doc(ListOf(DIRECTORY), "directories to create"),
        "users": Doc(MapOf(USER), "users to create, by name"),
        "authorized_keys": Doc(
            MapOf(STRS), "ssh keys to add, by user (`github:USER`, `gitlab:USER` fetch them)"
        ),
        "ensure_entities": Doc(ListOf(ENTITY), "passwd/group/shadow entries to add or update"),
        "delete_entities": Doc(ListOf(ENTITY), "passwd/group/shadow entries to remove"),
        "dns": Doc(DNS, "write resolv.conf"),
        "hostname": Doc(S, "hostname (templated): /etc/hostname, /etc/hosts, the running one"),
        "sysctl": Doc(STRMAP, "kernel parameters, written to /proc/sys"),
        "modules": Doc(STRS, "kernel modules to load"),
        "systemctl": Doc(SYSTEMCTL, "enable, disable, start, mask units; drop-in overrides"),
        "environment": Doc(STRMAP, "variables merged into environment_file"),
        "environment_file": Doc(S, "default /etc/environment"),
        "timesyncd": Doc(STRMAP, "[Time] settings of systemd-timesyncd"),
        "systemd_firstboot": Doc(STRMAP, "systemd-firstboot settings (keymap, locale, timezone…)"),
        "datasource": Doc(DATASOURCE, "fetch user data"),
        "layout": Doc(LAYOUT, "grow or add partitions"),
        "git": Doc(GIT, "clone a repository"),
        "packages": Doc(PACKAGES, "install or remove packages"),
        "package_pins": Doc(STRMAP, "package versions to pin"),
        "unpack_images": Doc(
            ListOf(Obj("unpack_image", {"source": S, "target": S, "platform": S})),
            "unpack container images into directories",
        ),
    },
    doc="One step of a stage; plugins run in yip's fixed order.",
)

_KAIROS = "a Kairos installer setting cos does not use"
INSTALL = Obj(
    "install",
    {
        "auto": Doc(
            B,
            "start the unattended install (as Kairos does); without it the section only"
            " holds settings and no disk is touched",
        ),
        "device": Doc(S, "the disk to install to, e.g. /dev/vda"),
        "system": Doc(S, "image to install (default: the image the live media carry)"),
        "recovery-system": Doc(S, "image of the recovery system (default: system)"),
        "cloud-init": Doc(STRS, "cloud-config files copied to COS_OEM"),
        "force": Doc(B, "overwrite an existing installation"),
        "reboot": Doc(B, "reboot when done"),
        "poweroff": Doc(B, "power off when done"),
        "tls-verify": Doc(B, "verify the registry's TLS certificate (default true)"),
    },
    doc="Unattended install, acted on by a live system (cos-live-install.service) when"
    " `auto: true`.",
    foreign=dict.fromkeys(
        "grub_options bundles image env partitions extra-partitions encrypted_partitions"  # noqa: SIM905
        " no-format skip_copy_kairos_image bind_mounts bind_public_pki_keys passive"
        " recovery firmware".split(),
        _KAIROS,
    ),
)

DOCUMENT = Obj(
    "document",
    {
        "name": Doc(S, "the document's name (in logs)"),
        "stages": Doc(MapOf(ListOf(STEP)), "steps by stage name"),
        "install": INSTALL,
    },
    doc="A yip configuration (cOS / Elemental / Kairos compatible).",
)


# The stages cos runs (any other name can be run with `cos cloud-init -s NAME`); each
# runs NAME.before, NAME, NAME.after.
BOOT_STAGES: dict[str, str] = {
    "rootfs": "initrd, run by `cos mount`: the snapshot is `/` (read-only), COS_OEM and"
    " COS_PERSISTENT are mounted, the overlays are not yet",
    "initramfs": "initrd, run by `cos mount` after the whole layout is mounted, before switch-root",
    "fs": "after local-fs.target, before sysinit.target (cos-setup-fs.service)",
    "boot": "multi-user, before getty and logins (cos-setup-boot.service)",
    "network": "after multi-user.target, once network-online.target is reached"
    " (cos-setup-network.service); the boot assessment's checks run after it",
    "reconcile": "5 minutes after boot, then every hour (cos-setup-reconcile.timer)",
}
HOOK_STAGES: dict[str, str] = {
    "before-disk": "`cos build-disk`, before anything is pulled",
    "after-disk-chroot": "`cos build-disk`, inside the unpacked image tree",
    "after-disk": "`cos build-disk`, after the disk is written",
    "before-iso": "`cos build-iso`, before anything is pulled",
    "after-iso": "`cos build-iso`, after the ISO is written",
    "before-install": "`cos install`, before the disk is partitioned",
    "after-install-chroot": "`cos install`, inside the new snapshot's tree",
    "after-install": "`cos install`, when the installation is complete",
    "before-upgrade": "`cos upgrade` (also `--download-only`), when there is a new image,"
    " before its layers are pulled",
    "after-upgrade-chroot": "`cos upgrade` (also `--download-only`), inside the new snapshot's"
    " tree before it is sealed",
    "after-upgrade": "`cos upgrade` (also `--apply`), after the switch to the new snapshot",
    "before-reset": "`cos reset`, before COS_STATE is formatted",
    "after-reset-chroot": "`cos reset`, inside the new snapshot's tree",
    "after-reset": "`cos reset`, when the system is redeployed",
}


def validate(doc: Any, source: str) -> tuple[dict[str, Any], list[SchemaError], list[SchemaError]]:
    """(the checked document, errors, warnings); the document runs when errors is empty."""
    found: list[SchemaError] = []
    mark = doc.mark if isinstance(doc, MarkedDict) else Mark(source, 1, 1)
    out = DOCUMENT.check(doc, "", mark, found)
    return out, [e for e in found if not e.warning], [e for e in found if e.warning]


def json_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "cos-cloud-config",
        **DOCUMENT.json,
    }
