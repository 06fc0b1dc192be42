"""The yip document schema: one declarative table that validates documents and
exports JSON Schema for editors.

Strict but compatible: every key yip knows is accepted with yip's types (including
its quirks, such as `ownerstring` and octal `permissions`); an unknown key is an
error with a "did you mean" hint instead of being silently ignored.
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

    def __str__(self) -> str:
        where = f"{self.mark}: " if self.mark else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.path}: {self.message}{hint}"


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
                        kmark, f"{path}.{k}", "unknown key", _did_you_mean(str(k), self.keys)
                    )
                )
                continue
            out[str(k)] = self.value.check(x, f"{path}.{k}", vmark, errs)
        return out


class Obj(T):
    def __init__(self, title: str, fields: dict[str, T], doc: str = "") -> None:
        self.title, self.fields = title, fields
        self.json = {
            "type": "object",
            "title": title,
            "additionalProperties": False,
            "properties": {k: t.json for k, t in fields.items()},
        }
        if doc:
            self.json["description"] = doc

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
                        _did_you_mean(str(k), self.fields),
                    )
                )
                continue
            out[str(k)] = t.check(x, sub, vmark, errs)
        return out


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

FILE = Obj(
    "file",
    {
        "path": S,
        "permissions": INT,
        "owner": INT,
        "group": INT,
        "content": S,
        "encoding": S,
        "ownerstring": S,
    },
)
DOWNLOAD = Obj(
    "download",
    {
        "path": S,
        "url": S,
        "timeout": INT,
        "permissions": INT,
        "owner": INT,
        "group": INT,
        "ownerstring": S,
    },
)
DIRECTORY = Obj("directory", {"path": S, "permissions": INT, "owner": INT, "group": INT})
USER = Obj(
    "user",
    {
        "name": S,
        "passwd": S,
        "ssh_authorized_keys": STRS,
        "gecos": S,
        "homedir": S,
        "no_create_home": B,
        "primary_group": S,
        "groups": STRS,
        "no_user_group": B,
        "system": B,
        "no_log_init": B,
        "shell": S,
        "lock_passwd": B,
        "uid": S,
    },
)
ENTITY = Obj("entity", {"path": S, "entity": S})
DNS = Obj("dns", {"nameservers": STRS, "search": STRS, "options": STRS, "path": S})
SYSTEMCTL = Obj(
    "systemctl",
    {
        "enable": STRS,
        "disable": STRS,
        "start": STRS,
        "mask": STRS,
        "overrides": ListOf(Obj("override", {"service": S, "name": S, "content": S})),
    },
)
DATASOURCE = Obj("datasource", {"providers": STRS, "path": S, "userdata_name": S})
LAYOUT = Obj(
    "layout",
    {
        "device": Obj("device", {"label": S, "path": S, "init_disk": B, "disk_name": S}),
        "expand_partition": Obj("expand_partition", {"size": INT}),
        "add_partitions": ListOf(
            Obj(
                "partition",
                {"fsLabel": S, "size": INT, "pLabel": S, "filesystem": S, "bootable": B},
            )
        ),
    },
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
        "name": S,
        "after": ListOf(Obj("after", {"name": S})),
        "if": S,
        "node": S,
        "only_os": S,
        "only_os_version": S,
        "only_arch": S,
        "only_service_manager": S,
        "if_files": MapOf(STRS, keys=("any", "all", "none")),
        "commands": STRS,
        "files": ListOf(FILE),
        "downloads": ListOf(DOWNLOAD),
        "directories": ListOf(DIRECTORY),
        "users": MapOf(USER),
        "authorized_keys": MapOf(STRS),
        "ensure_entities": ListOf(ENTITY),
        "delete_entities": ListOf(ENTITY),
        "dns": DNS,
        "hostname": S,
        "sysctl": STRMAP,
        "modules": STRS,
        "systemctl": SYSTEMCTL,
        "environment": STRMAP,
        "environment_file": S,
        "timesyncd": STRMAP,
        "systemd_firstboot": STRMAP,
        "datasource": DATASOURCE,
        "layout": LAYOUT,
        "git": GIT,
        "packages": PACKAGES,
        "package_pins": STRMAP,
        "unpack_images": ListOf(Obj("unpack_image", {"source": S, "target": S, "platform": S})),
    },
    doc="One step of a stage; plugins run in yip's fixed order.",
)

INSTALL = Obj(
    "install",
    {
        "device": S,
        "system": S,
        "recovery-system": S,
        "cloud-init": STRS,
        "force": B,
        "reboot": B,
        "poweroff": B,
        "tls-verify": B,
    },
    doc="Unattended install, acted on by a live system (cos-live-install.service).",
)

DOCUMENT = Obj(
    "document",
    {"name": S, "stages": MapOf(ListOf(STEP)), "install": INSTALL},
    doc="A yip configuration (cOS / Elemental / Kairos compatible).",
)


def validate(doc: Any, source: str) -> tuple[dict[str, Any], list[SchemaError]]:
    errs: list[SchemaError] = []
    mark = doc.mark if isinstance(doc, MarkedDict) else Mark(source, 1, 1)
    out = DOCUMENT.check(doc, "", mark, errs)
    return out, errs


def json_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "cos-cloud-config",
        **DOCUMENT.json,
    }
