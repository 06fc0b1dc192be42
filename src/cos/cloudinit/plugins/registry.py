"""The plugins in yip's order: every plugin of a step runs, whatever the others did."""

from __future__ import annotations

from typing import Any

from cos.cloudinit.plugins import commands, datasource, entities, files, layout, system, users
from cos.cloudinit.plugins.base import Context, Plugin, PluginError


def _not_available(key: str) -> Plugin:
    def apply(step: dict[str, Any], ctx: Context) -> None:
        raise PluginError(f"'{key}' is valid yip but not supported by this version of cos")

    return Plugin(key, (key,), apply, supported=False)


PLUGINS: list[Plugin] = [
    Plugin("dns", ("dns",), system.dns),
    Plugin("downloads", ("downloads",), files.downloads),
    _not_available("git"),
    Plugin("ensure_entities", ("ensure_entities",), entities.ensure_entities),
    Plugin("directories", ("directories",), files.directories),
    Plugin("files", ("files",), files.files),
    Plugin("commands", ("commands",), commands.commands),
    Plugin("delete_entities", ("delete_entities",), entities.delete_entities),
    Plugin("hostname", ("hostname",), system.hostname),
    Plugin("sysctl", ("sysctl",), system.sysctl),
    Plugin("users", ("users",), users.users),
    Plugin("authorized_keys", ("authorized_keys",), users.authorized_keys),
    Plugin("modules", ("modules",), system.modules),
    Plugin("timesyncd", ("timesyncd",), system.timesyncd),
    Plugin("systemctl", ("systemctl",), system.systemctl),
    Plugin("environment", ("environment",), system.environment),
    Plugin("systemd_firstboot", ("systemd_firstboot",), system.systemd_firstboot),
    Plugin("datasource", ("datasource",), datasource.datasource),
    Plugin("layout", ("layout",), layout.layout),
    _not_available("package_pins"),
    _not_available("packages"),
    _not_available("unpack_images"),
]
