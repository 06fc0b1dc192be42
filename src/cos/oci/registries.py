"""registries.conf: where a fleet says which registry serves what (mirrors, blocks).

The file and its format are those of the containers tools (containers-registries.conf
v2), read from where they read it, so one file configures podman, skopeo and cos
alike: `$CONTAINERS_REGISTRIES_CONF` if set (it must exist), else
`~/.config/containers/registries.conf` if it exists, else
`/etc/containers/registries.conf` (may be absent); then the drop-ins
`/etc/containers/registries.conf.d/*.conf` (not when the per-user file is used) and
`~/.config/containers/registries.conf.d/*.conf`, in name order. A drop-in's
`[[registry]]` replaces an earlier one with the same prefix.

An image name picks the `[[registry]]` with the longest matching `prefix` (`*.host`
matches subdomains). Its `location` replaces the prefix; its `[[registry.mirror]]`
entries are read first, in order, then the location itself. Mirrors and rewriting
apply to reads only: writes go to the name as given, as the containers tools do.

The one deliberate difference: an unknown key inside a `[[registry]]` or mirror table
is refused, where the containers tools ignore it, because a misspelt `blocked` or
`mirror` would otherwise quietly pull from where the fleet forbade.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cos.errors import ConfigError
from cos.oci.reference import ImageRef

log = logging.getLogger("cos")

ETC = Path("/etc/containers")
HINT = "see containers-registries.conf(5); cos reads the v2 format ([[registry]] tables)"
_TOP = {
    "registry",
    "unqualified-search-registries",
    "short-name-mode",
    "aliases",
    "credential-helpers",
    "additional-layer-store-auth-helper",
}
_REGISTRY_KEYS = {
    "prefix",
    "location",
    "insecure",
    "blocked",
    "mirror",
    "mirror-by-digest-only",
    "pull-from-mirror",
}
_MIRROR_KEYS = {"location", "insecure", "pull-from-mirror"}
_LOCATION = re.compile(
    r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


class PullFrom(StrEnum):
    """Which pulls a mirror serves (`pull-from-mirror`)."""

    ALL = "all"
    DIGEST_ONLY = "digest-only"
    TAG_ONLY = "tag-only"


@dataclass(frozen=True)
class Endpoint:
    location: str  # host[:port][/namespace…]; "" only for a `*.host` prefix: the name as given
    insecure: bool = False
    pull_from: PullFrom = PullFrom.ALL


@dataclass(frozen=True)
class Registry:
    prefix: str
    endpoint: Endpoint
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Endpoint, ...] = ()
    origin: str = ""  # the file that defined it, for messages


@dataclass(frozen=True)
class Source:
    """One place to read an image from: a mirror, or the registry (always last)."""

    name: str  # host[:port]/repository after rewriting
    insecure: bool = False
    mirror: bool = False

    @property
    def host(self) -> str:
        return self.name.partition("/")[0]

    @property
    def repo(self) -> str:
        return self.name.partition("/")[2]


def _matched(name: str, prefix: str) -> int:
    """Length of name that prefix covers, or -1 (a match ends where a path part does)."""
    if prefix.startswith("*."):
        host = name.partition("/")[0]
        hostname = re.sub(r":[0-9]+$", "", host)
        return len(host) if hostname.endswith(prefix[1:]) else -1
    if name == prefix or name.startswith(prefix + "/"):
        return len(prefix)
    return -1


@dataclass(frozen=True)
class RegistriesConf:
    registries: tuple[Registry, ...] = ()
    files: tuple[Path, ...] = ()

    def find(self, name: str) -> Registry | None:
        """The registry table with the longest prefix matching name (host/repo)."""
        best: Registry | None = None
        for reg in self.registries:
            if _matched(name, reg.prefix) >= 0 and (
                best is None or len(reg.prefix) > len(best.prefix)
            ):
                best = reg
        return best

    def _refuse_blocked(self, reg: Registry, ref: ImageRef) -> None:
        if reg.blocked:
            raise ConfigError(
                f"{ref}: registry {reg.prefix} is blocked in {reg.origin}",
                hint="pull from another registry, or remove `blocked = true` there",
            )

    def sources(self, ref: ImageRef) -> list[Source]:
        """Where to read ref from, in order: its mirrors, then its registry."""
        reg = self.find(ref.name)
        if reg is None:
            return [Source(ref.name)]
        self._refuse_blocked(reg, ref)
        digested = ref.digest is not None
        picked = []
        for m in reg.mirrors:
            if reg.mirror_by_digest_only or m.pull_from == PullFrom.DIGEST_ONLY:
                if not digested:
                    continue
            elif m.pull_from == PullFrom.TAG_ONLY and digested:
                continue
            picked.append(Source(_rewrite(ref.name, reg, m), m.insecure, mirror=True))
        return [*picked, Source(_rewrite(ref.name, reg, reg.endpoint), reg.endpoint.insecure)]

    def origin(self, ref: ImageRef) -> Source:
        """Where writes for ref go: the name as given (no mirror, no rewriting)."""
        reg = self.find(ref.name)
        if reg is None:
            return Source(ref.name)
        self._refuse_blocked(reg, ref)
        return Source(ref.name, reg.endpoint.insecure)


def _rewrite(name: str, reg: Registry, ep: Endpoint) -> str:
    if not ep.location:
        return name
    new = ep.location + name[_matched(name, reg.prefix) :]
    if "/" not in new or not _LOCATION.fullmatch(new):
        raise ConfigError(
            f"{reg.origin}: registry {reg.prefix}: location {ep.location!r} makes {new!r}"
            f" out of {name!r}, which is no image name",
            hint="a location is host[:port][/namespace], replacing the prefix",
        )
    return new


# -- reading -------------------------------------------------------------------------


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(f"{where}: {what}", hint=HINT)


def _typed(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = table.get(key)
    if value is not None and not isinstance(value, kind):
        word = {bool: "true or false", str: "a string"}[kind]
        raise _fail(where, f"{key} must be {word}, not {value!r}")
    return value


def _location(value: str | None, where: str) -> str:
    loc = (value or "").rstrip("/")
    if re.match(r"^https?://", loc):
        raise _fail(where, f"location {value!r}: give host[:port][/namespace], no URL scheme")
    if loc and not _LOCATION.fullmatch(loc):
        raise _fail(where, f"location {value!r} is not host[:port][/namespace]")
    return loc


def _pull_from(table: dict[str, Any], where: str) -> PullFrom:
    value = _typed(table, "pull-from-mirror", str, where) or "all"
    try:
        return PullFrom(value)
    except ValueError:
        raise _fail(
            where, f"pull-from-mirror {value!r}: use all, digest-only or tag-only"
        ) from None


def _known(table: object, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _fail(where, "expected a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")
    return table


def _registry(table: object, where: str, origin: str) -> Registry:
    t = _known(table, _REGISTRY_KEYS, where)
    location = _location(_typed(t, "location", str, where), where)
    prefix = (_typed(t, "prefix", str, where) or "").rstrip("/")
    if re.match(r"^https?://", prefix):
        raise _fail(where, f"prefix {prefix!r}: give host[:port][/namespace], no URL scheme")
    if not prefix:
        if not location:
            raise _fail(where, "neither prefix nor location is set")
        prefix = location
    elif prefix.startswith("*."):
        if re.search(r"[/@:]", prefix):
            raise _fail(where, f"wildcard prefix {prefix!r} must be *.host (no port or path)")
    elif not location:
        raise _fail(where, "location is unset (only a *.host prefix may leave it out)")
    if "pull-from-mirror" in t:
        raise _fail(where, "pull-from-mirror belongs in a [[registry.mirror]] table")
    by_digest = bool(_typed(t, "mirror-by-digest-only", bool, where))
    raw = t.get("mirror") or []
    if not isinstance(raw, list):
        raise _fail(where, "mirror must be an array of tables ([[registry.mirror]])")
    mirrors = []
    for j, m in enumerate(raw):
        mw = f"{where}.mirror[{j}]"
        mt = _known(m, _MIRROR_KEYS, mw)
        loc = _location(_typed(mt, "location", str, mw), mw)
        if not loc:
            raise _fail(mw, "location is unset")
        if by_digest and "pull-from-mirror" in mt:
            raise _fail(mw, "pull-from-mirror cannot be set with mirror-by-digest-only")
        mirrors.append(Endpoint(loc, bool(_typed(mt, "insecure", bool, mw)), _pull_from(mt, mw)))
    return Registry(
        prefix=prefix,
        endpoint=Endpoint(location, bool(_typed(t, "insecure", bool, where))),
        blocked=bool(_typed(t, "blocked", bool, where)),
        mirror_by_digest_only=by_digest,
        mirrors=tuple(mirrors),
        origin=origin,
    )


def _v1(doc: dict[str, Any], path: Path) -> list[Registry]:
    """The deprecated v1 format: lists of insecure and blocked registries."""
    where = f"{path}: registries"
    tables = _known(doc["registries"], {"search", "insecure", "block"}, where)
    flags: dict[str, dict[str, bool]] = {}
    for kind in ("block", "insecure"):
        listed = _known(tables.get(kind, {}), {"registries"}, f"{where}.{kind}")
        names = listed.get("registries", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise _fail(f"{where}.{kind}", "registries must be a list of strings")
        for n in names:
            loc = _location(n, f"{where}.{kind}")
            flags.setdefault(loc, {})[kind] = True
    return [
        Registry(
            loc, Endpoint(loc, f.get("insecure", False)), f.get("block", False), origin=str(path)
        )
        for loc, f in flags.items()
    ]


def parse(text: str, path: Path, v1_allowed: bool = True) -> dict[str, Registry]:
    """The registry tables of one file, by prefix (the first of a prefix wins)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint=HINT) from None
    if "registries" in doc:
        if not v1_allowed:
            raise _fail(str(path), "a drop-in must use the v2 format ([[registry]] tables)")
        if "registry" in doc:
            raise _fail(str(path), "mixes the v1 [registries.*] and v2 [[registry]] formats")
        regs = _v1(doc, path)
    else:
        for key in sorted(set(doc) - _TOP):
            log.warning("%s: unknown key %r is ignored", path, key)
        tables = doc.get("registry", [])
        if not isinstance(tables, list):
            raise _fail(str(path), "registry must be an array of tables ([[registry]])")
        regs = [_registry(t, f"{path}: registry[{i}]", str(path)) for i, t in enumerate(tables)]
    out: dict[str, Registry] = {}
    for reg in regs:
        out.setdefault(reg.prefix, reg)
    return out


def locate(
    env: Mapping[str, str] | None = None, etc: Path = ETC, home: Path | None = None
) -> tuple[Path | None, bool, list[Path]]:
    """(main file, whether it must exist, drop-in files in reading order)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME", "/root")) if home is None else home
    user_file = home / ".config/containers/registries.conf"
    user_dir = home / ".config/containers/registries.conf.d"
    override = env.get("CONTAINERS_REGISTRIES_CONF") or env.get("REGISTRIES_CONFIG_PATH")
    if override:
        main, required, dirs = Path(override), True, [etc / "registries.conf.d", user_dir]
    elif user_file.exists():
        main, required, dirs = user_file, True, [user_dir]
    else:
        main, required, dirs = etc / "registries.conf", False, [etc / "registries.conf.d", user_dir]
    dropins = []
    for d in dirs:
        try:
            dropins += sorted(p for p in d.iterdir() if p.suffix == ".conf" and p.is_file())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {d}: {exc.strerror}", hint=HINT) from exc
    return main, required, dropins


def _read(path: Path, required: bool) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"{path}: no such file",
                hint="CONTAINERS_REGISTRIES_CONF must name an existing registries.conf",
            ) from None
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", hint=HINT) from exc


_cache: dict[tuple[object, ...], RegistriesConf] = {}


def load(
    env: Mapping[str, str] | None = None, etc: Path = ETC, home: Path | None = None
) -> RegistriesConf:
    """The merged configuration (empty when there are no files); validated."""
    main, required, dropins = locate(env, etc, home)
    stamp: list[object] = [str(main)]
    for p in [main, *dropins] if main else dropins:
        try:
            st = p.stat()
            stamp += [str(p), st.st_mtime_ns, st.st_size]
        except OSError:
            stamp += [str(p), None]
    key = tuple(stamp)
    if key in _cache:
        return _cache[key]
    merged: dict[str, Registry] = {}
    files = []
    if main is not None and (text := _read(main, required)) is not None:
        merged.update(parse(text, main))
        files.append(main)
    for p in dropins:
        if (text := _read(p, False)) is not None:
            merged.update(parse(text, p, v1_allowed=False))
            files.append(p)
    conf = RegistriesConf(tuple(merged[k] for k in sorted(merged)), tuple(files))
    _cache.clear()
    _cache[key] = conf
    return conf
