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


def _plugin(module: str, key: str) -> Plugin:
    """The plugin of one yip key, whose function in module has the key's name."""
    return Plugin(key, (key,), _lazy(module, key))


def _not_available(key: str) -> Plugin:
    def apply(step: dict[str, Any], ctx: Context) -> None:
        raise PluginError(f"'{key}' is valid yip but not supported by this version of cos")

    return Plugin(key, (key,), apply, supported=False)


PLUGINS: list[Plugin] = [
    _plugin("system", "dns"),
    _plugin("files", "downloads"),
    _not_available("git"),
    _plugin("entities", "ensure_entities"),
    _plugin("files", "directories"),
    _plugin("files", "files"),
    _plugin("commands", "commands"),
    _plugin("entities", "delete_entities"),
    _plugin("system", "hostname"),
    _plugin("system", "sysctl"),
    _plugin("users", "users"),
    _plugin("users", "authorized_keys"),
    _plugin("system", "modules"),
    _plugin("system", "timesyncd"),
    _plugin("system", "systemctl"),
    _plugin("system", "environment"),
    _plugin("system", "systemd_firstboot"),
    _plugin("datasource", "datasource"),
    _plugin("layout", "layout"),
    _not_available("package_pins"),
    _not_available("packages"),
    _not_available("unpack_images"),
]
