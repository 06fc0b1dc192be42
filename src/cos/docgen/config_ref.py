"""docs/config.md from the config models (cos.config)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from enum import StrEnum
from typing import Any

from cos.config import DEFAULT_CONFIG_DIR, Config

HEADER = "<!-- Generated from src/cos/config.py by `make docs`; do not edit. -->\n"


def _key(name: str) -> str:
    return name.replace("_", "-")


def _type(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"list of {_type(item)}"
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return "string"
    return {bool: "boolean", int: "integer", str: "string"}.get(tp, getattr(tp, "__name__", "?"))


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if value == "":
        return "empty"
    return f"`{value}`"


def _env(path: list[str]) -> str:
    return "COS_" + "__".join(p.upper().replace("-", "_") for p in path)


def _section(cls: type[Any], path: list[str], out: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    nested: list[tuple[str, type[Any]]] = []
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = _key(f.name)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            nested.append((key, tp))
            continue
        full = ".".join([*path, key])
        rows.append(
            f"| `{full}` | {_type(tp)} | {_default(f)} | `{_env([*path, key])}` "
            f"| {f.metadata.get('doc', '')} |"
        )
    title = ".".join(path) if path else "Top-level keys"
    out += [f"## {title}", ""]
    doc = inspect.getdoc(cls)
    if doc:
        out += [" ".join(doc.split()), ""]
    out += [
        "| key | type | default | environment | description |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    for key, sub in nested:
        _section(sub, [*path, key], out)


def render() -> str:
    out = [
        HEADER,
        "# Configuration reference",
        "",
        f"Every `cos` command reads `{DEFAULT_CONFIG_DIR}/config.yaml`, then the",
        f"`{DEFAULT_CONFIG_DIR}/config.d/*.yaml` files in lexical order, then `COS_*`",
        "environment variables, then its command-line flags; a later source wins, key by",
        "key (mappings are merged). `--config-dir DIR` or `COS_CONFIG_DIR` reads another",
        "directory. Keys are written in kebab-case (`max-snaps`; `max_snaps` is accepted",
        "too). An unknown key, a wrong type or a value out of range is refused before",
        "anything is done, naming the file and the key (exit code 3).",
        "",
        "Environment variables: `COS_` + the key in upper case with `-` as `_`, and `__`",
        "between the levels of a nested key (`COS_MAX_SNAPS=3`,",
        "`COS_PARTITIONS__STATE=4096`). Booleans take `true/false/yes/no/on/off/1/0`; lists",
        "take words separated by spaces or commas. `COS_*` variables that name no key are",
        "ignored (other tools use the prefix too).",
        "",
        "```yaml",
        "# /etc/cos/config.d/50-site.yaml",
        "max-snaps: 3",
        "upgrade-system: 127.0.0.1:5000/os/node:stable",
        "verify: true",
        "cosign-key: /etc/cos/cosign.pub",
        "partitions:",
        "  state: 12288",
        "layout:",
        "  persistent: [/etc/ssh, /home, /root, /var/log, /var/lib/containers]",
        "```",
        "",
        "Flags that override keys: `--tls-verify BOOL` (`tls-verify`), `--cosign-key PATH`",
        "(`cosign-key`, and turns `verify` on), `--platform OS/ARCH` (`platform`), `--debug`",
        "(`debug`).",
        "",
    ]
    _section(Config, [], out)
    out += [
        "## Other environment variables",
        "",
        "| variable | used for |",
        "|---|---|",
        "| `COS_CONFIG_DIR` | the configuration directory (default `/etc/cos`) |",
        "| `REGISTRY_AUTH_FILE` | registry credentials (`auth.json`); the first file naming"
        " the registry wins, searched in this order: `$REGISTRY_AUTH_FILE`,"
        " `$XDG_RUNTIME_DIR/containers/auth.json`, `/run/containers/UID/auth.json`,"
        " `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` (default"
        " `~/.docker/config.json`); `credHelpers` and `credsStore` run"
        " `docker-credential-NAME` ([registries.md](registries.md#credentials)) |",
        "| `CONTAINERS_REGISTRIES_CONF` | the registries.conf to read instead of"
        " `/etc/containers/registries.conf` (mirrors, blocked and insecure registries;"
        " drop-ins in `registries.conf.d/` are read too: [registries.md](registries.md)) |",
        "| `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, `SSL_CERT_FILE`, `SSL_CERT_DIR` |"
        " proxies and CA certificates for registries |",
        "| `COSIGN_PASSWORD` | password of the private key for `cos sign` and"
        " `cos generate-key-pair` (else a prompt) |",
        "",
    ]
    return "\n".join(out)
