"""The plugins in yip's order: every plugin of a step runs, whatever the others did.

A plugin's module is imported when a step first uses it: most boots run a few
plugins, and every module read costs time early in boot on a slow machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cos.cloudinit.plugins.base import Context, Plugin, PluginError


def _lazy(module: str, func: str) -> Callable[[dict[str, Any], Context], None]:
    def apply(step: dict[str, Any], ctx: Context) -> None:
        getattr(importlib.import_module(f"cos.cloudinit.plugins.{module}"), func)(step, ctx)

    apply.__qualname__ = f"{module}.{func}"
    return apply


def _not_available(key: str) -> Plugin:
    def apply(step: dict[str, Any], ctx: Context) -> None:
        raise PluginError(f"'{key}' is valid yip but not supported by this version of cos")

    return Plugin(key, (key,), apply, supported=False)


PLUGINS: list[Plugin] = [
    Plugin("dns", ("dns",), _lazy("system", "dns")),
    Plugin("downloads", ("downloads",), _lazy("files", "downloads")),
    _not_available("git"),
    Plugin("ensure_entities", ("ensure_entities",), _lazy("entities", "ensure_entities")),
    Plugin("directories", ("directories",), _lazy("files", "directories")),
    Plugin("files", ("files",), _lazy("files", "files")),
    Plugin("commands", ("commands",), _lazy("commands", "commands")),
    Plugin("delete_entities", ("delete_entities",), _lazy("entities", "delete_entities")),
    Plugin("hostname", ("hostname",), _lazy("system", "hostname")),
    Plugin("sysctl", ("sysctl",), _lazy("system", "sysctl")),
    Plugin("users", ("users",), _lazy("users", "users")),
    Plugin("authorized_keys", ("authorized_keys",), _lazy("users", "authorized_keys")),
    Plugin("modules", ("modules",), _lazy("system", "modules")),
    Plugin("timesyncd", ("timesyncd",), _lazy("system", "timesyncd")),
    Plugin("systemctl", ("systemctl",), _lazy("system", "systemctl")),
    Plugin("environment", ("environment",), _lazy("system", "environment")),
    Plugin("systemd_firstboot", ("systemd_firstboot",), _lazy("system", "systemd_firstboot")),
    Plugin("datasource", ("datasource",), _lazy("datasource", "datasource")),
    Plugin("layout", ("layout",), _lazy("layout", "layout")),
    _not_available("package_pins"),
    _not_available("packages"),
    _not_available("unpack_images"),
]
