"""hostname, dns, sysctl, modules, timesyncd, environment, systemd_firstboot, systemctl."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from cos.cloudinit.plugins.base import Context, PluginError, write_file
from cos.errors import ToolError
from cos.system.identity import hosts_naming, valid_hostname


def hostname(step: dict[str, Any], ctx: Context) -> None:
    name = ctx.render(step["hostname"]).strip()
    if not name:
        return
    if not valid_hostname(name):
        raise PluginError(f"invalid hostname {name!r}")
    if not ctx.act(f"hostname {name}"):
        return
    write_file(ctx.path("/etc/hostname"), f"{name}\n".encode(), 0o644)
    hosts = hosts_naming(ctx.read_text("/etc/hosts") or "", name)
    write_file(ctx.path("/etc/hosts"), hosts.encode(), 0o644)
    if ctx.live:
        try:
            socket.sethostname(name)
        except OSError as exc:
            raise PluginError(f"sethostname failed: {exc}") from exc


def dns(step: dict[str, Any], ctx: Context) -> None:
    d = step["dns"]
    if not d.get("nameservers"):
        return
    path = d.get("path") or "/etc/resolv.conf"
    lines = []
    search = " ".join(d.get("search") or [])
    if search and search != ".":
        lines.append(f"search {search}")
    lines += [f"nameserver {n}" for n in d["nameservers"]]
    if d.get("options"):
        lines.append("options " + " ".join(d["options"]))
    if not ctx.act(f"write {path}: {', '.join(d['nameservers'])}"):
        return
    target = ctx.path(path)
    if target.is_symlink():
        target.unlink()  # often a link into /run (resolved); replace it with a file
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, ("\n".join(lines) + "\n").encode(), 0o644)


def sysctl(step: dict[str, Any], ctx: Context) -> None:
    errors = []
    for key, value in step["sysctl"].items():
        if not ctx.live:
            errors.append(f"sysctl {key}: only applies to the running system (not --root)")
            continue
        if not ctx.act(f"sysctl {key}={value}"):
            continue
        p = Path("/proc/sys") / key.replace(".", "/")
        try:
            p.write_text(str(value))
        except OSError as exc:
            errors.append(f"sysctl {key}: {exc.strerror}")
    if errors:
        raise PluginError("; ".join(errors))


def modules(step: dict[str, Any], ctx: Context) -> None:
    loaded = set()
    if Path("/proc/modules").exists():
        loaded = {line.split()[0] for line in Path("/proc/modules").read_text().splitlines()}
    errors = []
    for spec in step["modules"]:
        words = spec.split()
        if not words or words[0] in loaded:
            continue
        if not ctx.live:
            errors.append(f"module {words[0]}: only loads on the running system (not --root)")
            continue
        if not ctx.act(f"modprobe {spec}"):
            continue
        try:
            ctx.tool(["modprobe", *words])
        except ToolError as exc:
            errors.append(f"modprobe {words[0]}: {exc}")
    if errors:
        raise PluginError("; ".join(errors))


def _ini(section: str, values: dict[str, str]) -> bytes:
    return (f"[{section}]\n" + "".join(f"{k}={v}\n" for k, v in values.items())).encode()


def timesyncd(step: dict[str, Any], ctx: Context) -> None:
    path = "/etc/systemd/timesyncd.conf.d/10-yip.conf"
    if not ctx.act(f"write {path}"):
        return
    target = ctx.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, _ini("Time", step["timesyncd"]), 0o644)


def _parse_dotenv(text: str) -> dict[str, str]:
    """KEY=value lines; a quoted value is unquoted, an unquoted one runs to the line end."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, _, v = line.removeprefix("export ").partition("=")
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            quote, v = v[0], v[1:-1]
            if quote == '"':
                v = re.sub(r'\\(["\\$`])', r"\1", v)
        out[k.strip()] = v
    return out


def _quote_env(value: str) -> str:
    return '"' + re.sub(r'(["\\$`])', r"\\\1", value).replace("\n", "\\n") + '"'


def environment(step: dict[str, Any], ctx: Context) -> None:
    path = step.get("environment_file") or "/etc/environment"
    values = {k: ctx.render(v) for k, v in step["environment"].items()}
    if not ctx.act(f"set {', '.join(values)} in {path}"):
        return
    target = ctx.path(path)
    current = _parse_dotenv(ctx.read_text(path) or "")
    current.update(values)
    text = "".join(f"{k}={_quote_env(v)}\n" for k, v in sorted(current.items()))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, text.encode(), 0o644)


def _passwords(argv: list[str]) -> frozenset[int]:
    """Where --root-password=… or --root-password-hashed=… is: shown as *** in plan and log."""
    return frozenset(
        i for i, a in enumerate(argv) if "=" in a and "password" in a.partition("=")[0]
    )


# The settings systemd-firstboot takes from a config (yip passes any key as a flag;
# cos only these, so that a `root` or `image` key cannot retarget the tool and no
# `copy-*` or `*-file` setting reads the host's files into a --root target).
FIRSTBOOT_KEYS = {
    "locale",
    "locale-messages",
    "keymap",
    "timezone",
    "hostname",
    "machine-id",
    "root-password",
    "root-password-hashed",
    "root-shell",
    "kernel-command-line",
    "setup-machine-id",
    "delete-root-password",
    "force",
    "reset",
    "welcome",
}


def systemd_firstboot(step: dict[str, Any], ctx: Context) -> None:
    args = []
    for k, v in sorted(step["systemd_firstboot"].items()):
        key = k.lower().replace("_", "-")
        if key not in FIRSTBOOT_KEYS:
            raise PluginError(
                f"systemd_firstboot: {k!r} is not a setting cos passes on"
                f" (known: {', '.join(sorted(FIRSTBOOT_KEYS))})"
            )
        if "\n" in v or "\0" in v:
            raise PluginError(f"systemd_firstboot: {k} must not contain a newline")
        args.append(f"--{key}" if v == "true" else f"--{key}={v}")
    hidden = _passwords(args)
    plan = [f"{a.partition('=')[0]}=***" if i in hidden else a for i, a in enumerate(args)]
    if not ctx.act("systemd-firstboot " + " ".join(plan)):
        return
    root = [] if ctx.live else [f"--root={ctx.root}"]
    argv = ["systemd-firstboot", *args, *root]  # cos's --root last: it wins
    try:
        ctx.tool(argv, secret_args=_passwords(argv))
    except ToolError as exc:
        raise PluginError(f"systemd-firstboot: {exc}") from exc


def systemctl(step: dict[str, Any], ctx: Context) -> None:
    s = step["systemctl"]
    errors = []
    root = [] if ctx.live else [f"--root={ctx.root}"]
    for verb in ("enable", "disable", "mask", "start"):
        for unit in s.get(verb) or []:
            if verb == "start" and not ctx.live:
                errors.append(f"start {unit}: only on the running system (not --root)")
                continue
            if not ctx.act(f"systemctl {verb} {unit}"):
                continue
            try:
                # `--` ends the options: a unit named --root=/ is a unit name, not a flag.
                argv = ["systemctl", *root, verb, "--", unit]
                if verb == "start":
                    argv.insert(1, "--no-block")
                ctx.tool(argv)
            except ToolError as exc:
                errors.append(f"systemctl {verb} {unit}: {exc}")
    for o in s.get("overrides") or []:
        service, content = o.get("service") or "", o.get("content") or ""
        if not service or not content:
            continue
        name = o.get("name") or "override-yip.conf"
        name = name if name.endswith(".conf") else f"{name}.conf"
        if "." not in service:
            service = f"{service}.service"
        path = f"/etc/systemd/system/{service}.d/{name}"
        if not ctx.act(f"write {path}"):
            continue
        target = ctx.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        write_file(target, content.encode(), 0o644)
    if errors:
        raise PluginError("; ".join(errors))
