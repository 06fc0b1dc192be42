"""ensure_entities / delete_entities: passwd, group, shadow and gshadow rows given as
small YAML documents (the mudler/entities format yip uses)."""

from __future__ import annotations

import time
from typing import Any

import yaml

from cos.cloudinit.plugins.accounts import Table
from cos.cloudinit.plugins.base import Context, Errors, PluginError
from cos.cloudinit.plugins.users import hash_password

# kind → (default file, row width, key field, fields in row order)
KINDS: dict[str, tuple[str, int, str, list[str]]] = {
    "user": (
        "/etc/passwd",
        7,
        "username",
        ["username", "password", "uid", "gid", "info", "homedir", "shell"],
    ),
    "group": ("/etc/group", 4, "group_name", ["group_name", "password", "gid", "users"]),
    "shadow": (
        "/etc/shadow",
        9,
        "username",
        [
            "username",
            "password",
            "last_changed",
            "minimum_changed",
            "maximum_changed",
            "warn",
            "inactive",
            "expire",
            "reserved",
        ],
    ),
    "gshadow": ("/etc/gshadow", 4, "name", ["name", "password", "administrators", "members"]),
}


def _parse(item: dict[str, Any]) -> tuple[str, str, list[str]]:
    try:
        data = yaml.safe_load(item.get("entity") or "")
    except yaml.YAMLError as exc:
        raise PluginError(f"entity is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") not in KINDS:
        raise PluginError(f"entity needs kind: one of {', '.join(KINDS)}")
    kind = data["kind"]
    path, _, key, fields = KINDS[kind]
    if not data.get(key):
        raise PluginError(f"{kind} entity needs {key}")
    row = []
    for f in fields:
        v = data.get(f, "")
        if f == "last_changed" and v == "now":
            v = int(time.time() // 86400)
        row.append("" if v is None else str(v))
    return kind, item.get("path") or path, row


def ensure_entities(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for item in step["ensure_entities"]:
        with errors.item(None):
            kind, path, row = _parse(item)
            if kind == "shadow" and row[1] and row[1][0] not in "$!*":
                row[1] = hash_password(row[1])  # never a plain password on disk
            if not ctx.act(f"ensure {kind} {row[0]} in {path}"):
                continue
            table = Table.read(ctx, path, len(row))
            existing = table.find(row[0])
            if existing is None:
                table.rows.append(row)
            elif kind in ("group", "gshadow"):
                # Members are merged and fields not given are kept, as entities does.
                members = 3
                merged = [m for m in existing[members].split(",") if m]
                merged += [m for m in row[members].split(",") if m and m not in merged]
                new = [v or old for v, old in zip(row, existing, strict=True)]
                new[members] = ",".join(merged)
                existing[:] = new
            else:
                existing[:] = row
            table.write()
    errors.raise_any()


def delete_entities(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for item in step["delete_entities"]:
        with errors.item(None):
            kind, path, row = _parse(item)
            if not ctx.act(f"delete {kind} {row[0]} from {path}"):
                continue
            table = Table.read(ctx, path, len(row))
            table.rows = [r for r in table.rows if r[0] != row[0]]
            table.write()
    errors.raise_any()
