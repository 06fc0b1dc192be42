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


DYNAMIC_IDS = (500, 999)  # entities' default range for uid/gid -1


def _parse(item: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(kind, file, the fields given as text). Every field is checked before anything
    is written: a ':' or a newline would add or shift rows of the database."""
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
    given: dict[str, str] = {}
    for f in [*fields, "group"] if kind == "user" else fields:
        if f not in data or data[f] is None:
            continue
        v = data[f]
        if f == "last_changed" and v == "now":
            v = int(time.time() // 86400)
        text = str(v)
        if ":" in text or "\n" in text or "\r" in text:
            raise PluginError(f"{kind} {data[key]}: {f} must not contain ':' or a newline")
        given[f] = text
    return kind, item.get("path") or path, given


def _free(rows: list[list[str]], column: int) -> str:
    used = {r[column] for r in rows}
    lo, hi = DYNAMIC_IDS
    for i in range(lo, hi + 1):
        if str(i) not in used:
            return str(i)
    raise PluginError(f"no free id left in {lo}-{hi}")


def _user_ids(
    given: dict[str, str], ctx: Context, table: Table, existing: list[str] | None
) -> None:
    """uid/gid as entities reads them: -1 picks a free id, `group` names the group
    whose gid to use. A new user without them is refused (entities would write 0,
    a second root)."""
    if given.get("uid") == "-1":
        given["uid"] = existing[2] if existing else _free(table.rows, 2)
    if "group" in given:
        row = Table.read(ctx, "/etc/group", 4).find(given.pop("group"))
        if row is None:
            raise PluginError(f"user {given['username']}: group does not exist")
        given.setdefault("gid", row[2])
    for f in ("uid", "gid"):
        if f in given and not given[f].isdigit():
            raise PluginError(f"user {given['username']}: {f} {given[f]!r} is not a number")
        if f not in given and existing is None:
            raise PluginError(
                f"user {given['username']}: a new user needs {f}"
                + (" (a number, or -1 for a free one)" if f == "uid" else " or group")
            )


def ensure_entities(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for item in step["ensure_entities"]:
        with errors.item(None):
            kind, path, given = _parse(item)
            _, width, key, fields = KINDS[kind]
            name = given[key]
            if not ctx.act(f"ensure {kind} {name} in {path}"):
                continue
            if kind == "shadow" and given.get("password", "")[:1] not in ("", "$", "!", "*"):
                given["password"] = hash_password(given["password"])  # never plain on disk
            table = Table.read(ctx, path, width)
            existing = table.find(name)
            if kind == "user":
                _user_ids(given, ctx, table, existing)
            if kind == "group" and given.get("gid") == "-1":
                given["gid"] = existing[2] if existing else _free(table.rows, 2)
            if kind == "group" and existing is None and not given.get("gid", "").isdigit():
                raise PluginError(f"group {name}: a new group needs a numeric gid (or -1)")
            # Fields not given keep their value (shadow aging, a user's home…), as
            # entities merges; group members are merged.
            old = existing or [""] * width
            row = [given.get(f, old[i]) for i, f in enumerate(fields)]
            if kind in ("group", "gshadow") and existing is not None:
                members = 3
                merged = [m for m in existing[members].split(",") if m]
                merged += [m for m in given.get(fields[members], "").split(",") if m not in merged]
                row[members] = ",".join(m for m in merged if m)
            if existing is None:
                table.rows.append(row)
            else:
                existing[:] = row
            table.write()
    errors.raise_any()


def delete_entities(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for item in step["delete_entities"]:
        with errors.item(None):
            kind, path, given = _parse(item)
            _, width, key, _ = KINDS[kind]
            if not ctx.act(f"delete {kind} {given[key]} from {path}"):
                continue
            table = Table.read(ctx, path, width)
            table.rows = [r for r in table.rows if r[0] != given[key]]
            table.write()
    errors.raise_any()
