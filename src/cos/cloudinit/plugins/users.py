"""users and authorized_keys, applied to the target's account files.

Passwords: a value starting with '$' is a crypt hash and is stored as is; anything
else is hashed (SHA-512 crypt) before it is stored; `lock_passwd` stores '!'.
Plain passwords never reach argv or logs.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

from cos import run as runner
from cos.cloudinit.plugins.accounts import Table
from cos.cloudinit.plugins.base import Context, Errors, PluginError, write_file
from cos.errors import ToolError


def hash_password(plain: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt

            return crypt.crypt(plain, crypt.mksalt(crypt.METHOD_SHA512))
        except ImportError:
            pass
    try:  # secret on stdin, never in argv
        return runner.run(["openssl", "passwd", "-6", "-stdin"], input=plain).stdout.strip()
    except ToolError as exc:
        raise PluginError("cannot hash the password (no crypt module, no openssl)") from exc


def _default_shell(ctx: Context) -> str:
    for line in (ctx.read_text("/etc/default/useradd") or "").splitlines():
        if line.startswith("SHELL="):
            return line.split("=", 1)[1].strip() or "/bin/sh"
    return "/bin/sh"


def _free_id(used: set[int], system: bool) -> int:
    lo, hi = (100, 999) if system else (1000, 59999)
    for i in range(lo, hi + 1):
        if i not in used:
            return i
    raise PluginError("no free uid/gid left")


def _password_field(u: dict[str, Any]) -> str | None:
    if u.get("lock_passwd"):
        return "!"
    pw = u.get("passwd")
    if pw is None:
        return None
    return pw if pw.startswith("$") or pw in ("!", "*", "!*") else hash_password(pw)


_ROW_FIELDS = ("gecos", "homedir", "shell", "primary_group", "uid", "passwd")


def check_user(name: str, u: dict[str, Any]) -> None:
    """Refuse what would corrupt or add rows of passwd, group or shadow, before any
    file is written: a ':' or newline in a field, a name that is not one word."""
    if (
        not name
        or name.startswith("-")
        or any(c in name for c in ":,\n\r/ \t")
        or name
        in (
            ".",
            "..",
        )
    ):
        raise PluginError(f"invalid user name {name!r}")
    for f in _ROW_FIELDS:
        v = str(u.get(f) or "")
        if ":" in v or "\n" in v or "\r" in v:
            raise PluginError(f"{f} must not contain ':' or a newline")
    for g in u.get("groups") or []:
        if any(c in g for c in ":,\n\r"):
            raise PluginError(f"group {g!r} must not contain ':', ',' or a newline")
    home = u.get("homedir")
    if home and not str(home).startswith("/"):
        raise PluginError(f"homedir {home!r} must be an absolute path")
    if u.get("uid") and not str(u["uid"]).isdigit():
        raise PluginError(f"uid {u['uid']!r} is not a number")


def users(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    valid = {}
    for name, u in sorted(step["users"].items()):
        with errors.item(f"user {name}"):
            check_user(name, u)
            valid[name] = u
    for name, u in valid.items():
        with errors.item(f"user {name}"):
            _user(name, u, ctx)
    for name, u in valid.items():
        if u.get("ssh_authorized_keys"):
            with errors.item(f"user {name}"):
                _add_keys(name, u["ssh_authorized_keys"], ctx)
    errors.raise_any()


def _user(name: str, u: dict[str, Any], ctx: Context) -> None:
    passwd = Table.read(ctx, "/etc/passwd", 7)
    shadow = Table.read(ctx, "/etc/shadow", 9)
    group = Table.read(ctx, "/etc/group", 4)
    days = str(int(time.time() // 86400))
    existing = passwd.find(name)
    if existing is not None:
        if u.get("passwd") is None and not u.get("lock_passwd"):
            return
        if not ctx.act(f"update password of {name}"):
            return
        pw = _password_field(u) or "!"
        row = shadow.find(name)
        if row is None:
            shadow.rows.append([name, pw, days, "0", "99999", "7", "", "", ""])
        else:
            row[1], row[2] = pw, days  # the aging fields stay as they are
        shadow.write()
        return
    if not ctx.act(f"create user {name}"):
        return
    new_pw = _password_field(u)
    uids = {int(r[2]) for r in passwd.rows if r[2].isdigit()}
    gids = {int(r[2]) for r in group.rows if r[2].isdigit()}
    uid = int(u["uid"]) if u.get("uid") else _free_id(uids, bool(u.get("system")))
    if u.get("primary_group"):
        g = group.find(u["primary_group"])
        if g is None:
            raise PluginError(f"primary group {u['primary_group']!r} does not exist")
        gid = int(g[2])
    elif (g := group.find(name)) is not None:
        gid = int(g[2])
    else:
        gid = uid if uid not in gids else _free_id(gids, bool(u.get("system")))
        group.rows.append([name, "x", str(gid), ""])
    for extra in u.get("groups") or []:
        row = group.find(extra)
        if row is not None:
            members = [m for m in row[3].split(",") if m]
            if name not in members:
                row[3] = ",".join([*members, name])
    home = u.get("homedir") or f"/home/{name}"
    shell = u.get("shell") or _default_shell(ctx)
    passwd.rows.append([name, "x", str(uid), str(gid), u.get("gecos") or "", home, shell])
    shadow.rows.append([name, new_pw or "!", days, "0", "99999", "7", "", "", ""])
    passwd.write()
    group.write()
    shadow.write()
    if not u.get("no_create_home"):
        h = ctx.path(home)
        h.mkdir(parents=True, exist_ok=True)
        os.chmod(h, 0o755)
        os.chown(h, uid, gid)


MAX_KEYS_BYTES = 1024 * 1024
_KEY_SERVICES = {"github": "https://github.com/{}.keys", "gitlab": "https://gitlab.com/{}.keys"}


def _remote(key: str) -> str | None:
    """The URL of a key entry that names keys elsewhere (github:, gitlab:, http(s)://)."""
    kind, sep, who = key.partition(":")
    if sep and kind in _KEY_SERVICES and who and "/" not in who:
        return _KEY_SERVICES[kind].format(who)
    if key.startswith(("http://", "https://")):
        return key
    return None


def _add_keys(user: str, keys: list[str], ctx: Context) -> None:
    row = Table.read(ctx, "/etc/passwd", 7).find(user)
    if row is None:
        raise PluginError(f"authorized_keys: user {user!r} does not exist")
    if not (row[2].isdigit() and row[3].isdigit()):
        raise PluginError(f"authorized_keys: the passwd row of {user!r} has no numeric uid/gid")
    uid, gid, home = int(row[2]), int(row[3]), row[5]
    if not home.startswith("/"):
        raise PluginError(f"authorized_keys: home of {user!r} is not an absolute path")
    remote = [k for k in keys if _remote(k)]
    if not ctx.act(
        f"add {len(keys) - len(remote)} ssh key(s) for {user}"
        + (f", and the keys of {', '.join(remote)}" if remote else "")
    ):
        return
    wanted: list[str] = []
    for k in keys:
        url = _remote(k)
        if url is None:
            wanted += [line.strip() for line in k.splitlines() if line.strip()]
            continue
        text = ctx.fetch(url, timeout=15, limit=MAX_KEYS_BYTES).decode(errors="replace")
        wanted += [line.strip() for line in text.splitlines() if line.strip()]
    ssh = ctx.path(f"{home.rstrip('/')}/.ssh")
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    os.chown(ssh, uid, gid)
    ak_path = f"{home.rstrip('/')}/.ssh/authorized_keys"
    ak = ctx.path(ak_path)
    current = ctx.read_text(ak_path) or ""
    present = set(current.splitlines())
    for k in wanted:
        if k not in present:
            current += ("" if not current or current.endswith("\n") else "\n") + k + "\n"
            present.add(k)
    write_file(ak, current.encode(), 0o600, uid, gid)


def authorized_keys(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for user, keys in sorted(step["authorized_keys"].items()):
        with errors.item(None):
            _add_keys(user, keys, ctx)
    errors.raise_any()
