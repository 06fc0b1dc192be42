"""Loading cloud-configs from files, directories, URLs, stdin and the kernel cmdline.

Each source becomes one or more validated documents. Each file loads on its own: a
broken one (bad YAML, a value of the wrong type, too big or too deep) is reported
with file:line:column and key path and skipped; the others still load. Keys cos does
not know are warnings and the rest of their document runs, as in yip; `strict`
makes them errors. Only regular files are read: a FIFO or device in a config
directory is skipped with a warning, never opened.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cos.cloudinit.schema import SchemaError, validate
from cos.cloudinit.yamlmarks import Mark, MarkedDict, YamlError, load

log = logging.getLogger("cos.cloudinit")
CLOUD_CONFIG_HEADER = "#cloud-config"
MAX_INDEX = 1000
MAX_FILE_BYTES = 4 * 1024 * 1024  # a cloud-config larger than this is refused
MAX_FILES = 1000  # cloud-config files read from one directory
_SUPPORTED_CLOUD_CONFIG = {
    "users",
    "ssh_authorized_keys",
    "write_files",
    "milpa_files",
    "runcmd",
    "hostname",
    "growpart",
    "stages",
    "name",
    "install",
}


@dataclass
class Document:
    source: str
    name: str
    stages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    install: dict[str, Any] | None = None  # an unattended install request (live media)


@dataclass
class LoadResult:
    documents: list[Document] = field(default_factory=list)
    errors: list[SchemaError] = field(default_factory=list)  # each refused a document
    warnings: list[SchemaError] = field(default_factory=list)  # reported; the rest ran

    def extend(self, other: LoadResult) -> None:
        self.documents += other.documents
        self.errors += other.errors
        self.warnings += other.warnings

    def warn(self, warning: SchemaError) -> None:
        warning.warning = True
        self.warnings.append(warning)
        log.warning("%s (ignored)", warning)


def is_cloud_config(text: str) -> bool:
    """True when '#cloud-config' comes first (within 10 lines, past blanks and comments)."""
    for i, line in enumerate(text.splitlines()):
        if i >= 10:
            return False
        s = line.rstrip()
        if s == CLOUD_CONFIG_HEADER:
            return True
        if s and not s.startswith("#"):
            return False
    return False


def _octal(value: Any, mark: Mark | None, path: str, errs: list[SchemaError]) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value), 8)
    except ValueError:
        errs.append(SchemaError(mark, path, f"permissions {value!r} is not an octal mode"))
        return None


def _str_list(value: Any, path: str, mark: Mark | None, errs: list[SchemaError]) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return list(value)
    errs.append(SchemaError(mark, path, "expected a list of strings"))
    return []


def transpile_cloud_config(
    doc: Any, source: str
) -> tuple[Any, list[SchemaError], list[SchemaError]]:
    """Map a #cloud-config document onto yip stages (the mapping yip itself applies).

    Returns (document, errors, warnings). Top-level keys cos does not run (Kairos and
    Elemental keep their own settings beside the cloud-config ones: install, k3s,
    elemental…) are warnings, so such files still apply their users and stages.
    """
    errs: list[SchemaError] = []
    warns: list[SchemaError] = []
    if doc is None:
        return {}, errs, warns
    if not isinstance(doc, dict):
        return doc, errs, warns  # validate() reports it
    km = doc.key_marks if isinstance(doc, MarkedDict) else {}
    for k in doc:
        if k not in _SUPPORTED_CLOUD_CONFIG:
            warns.append(
                SchemaError(
                    km.get(k),
                    str(k),
                    "cloud-config key not used by cos",
                    "used: " + ", ".join(sorted(_SUPPORTED_CLOUD_CONFIG)),
                    warning=True,
                )
            )
    step: dict[str, Any] = {}
    network_keys: dict[str, list[str]] = {}
    global_keys = _str_list(
        doc.get("ssh_authorized_keys"), "ssh_authorized_keys", km.get("ssh_authorized_keys"), errs
    )

    def split(keys: list[Any]) -> list[Any]:
        local = []
        for key in keys:
            if isinstance(key, str) and re.match(r"^(github|gitlab):", key):
                network_keys.setdefault(user_for_network, []).append(key)
            else:
                local.append(key)
        return local

    users_in = doc.get("users") or []
    if isinstance(users_in, list) and users_in:
        users: dict[str, Any] = {}
        keys: dict[str, Any] = {}
        for i, u in enumerate(users_in):
            if not isinstance(u, dict) or "name" not in u:
                mark = users_in.item_marks[i] if hasattr(users_in, "item_marks") else None
                errs.append(
                    SchemaError(mark, f"users[{i}]", "each user needs a mapping with a name")
                )
                continue
            name = str(u["name"])
            user_for_network = name
            entry = {k: v for k, v in u.items() if k != "ssh_authorized_keys"}
            own = _str_list(
                u.get("ssh_authorized_keys"), f"users[{i}].ssh_authorized_keys", None, errs
            )
            local = split(own + global_keys)
            users[name] = entry
            if local:
                keys[name] = local
        step["users"] = users
        if keys:
            step["authorized_keys"] = keys
    elif global_keys:
        user_for_network = "root"
        local = split(global_keys)
        if local:
            step["authorized_keys"] = {"root": local}
    elif users_in and not isinstance(users_in, list):
        errs.append(SchemaError(km.get("users"), "users", "expected a list of users"))

    files = []
    for key in ("write_files", "milpa_files"):
        wf = doc.get(key) or []
        if not isinstance(wf, list):
            errs.append(SchemaError(km.get(key), key, "expected a list of files"))
            continue
        for i, f in enumerate(wf):
            if not isinstance(f, dict):
                errs.append(SchemaError(None, f"{key}[{i}]", "expected a mapping"))
                continue
            mark = f.mark if isinstance(f, MarkedDict) else None
            out = {k: v for k, v in f.items() if k not in ("owner", "permissions")}
            if "owner" in f:
                out["ownerstring"] = f["owner"]
            mode = _octal(f.get("permissions"), mark, f"{key}[{i}].permissions", errs)
            out["permissions"] = 0o644 if mode is None else mode
            files.append(out)
    if files:
        step["files"] = files
    if doc.get("runcmd"):
        step["commands"] = doc["runcmd"]

    stages: dict[str, list[Any]] = {}
    if step:
        stages.setdefault("boot", []).append(step)
    growpart = doc.get("growpart") or {}
    if isinstance(growpart, dict):
        devices = _str_list(growpart.get("devices"), "growpart.devices", None, errs)
        for dev in devices:
            stages.setdefault("boot", []).append(
                {"layout": {"device": {"path": dev}, "expand_partition": {"size": 0}}}
            )
    if "hostname" in doc:
        stages.setdefault("initramfs", []).append({"hostname": doc["hostname"]})
    if network_keys:
        stages.setdefault("network", []).append({"authorized_keys": network_keys})
    own_stages = doc.get("stages")
    if isinstance(own_stages, dict):
        for stage, steps in own_stages.items():
            stages.setdefault(str(stage), []).extend(steps if isinstance(steps, list) else [steps])
    out_doc: dict[str, Any] = {"stages": stages}
    if "name" in doc:
        out_doc["name"] = doc["name"]
    if "install" in doc:
        out_doc["install"] = doc["install"]
    return out_doc, errs, warns


def load_text(text: str, source: str, *, strict: bool = False) -> LoadResult:
    """The document of one file's text; with strict, warnings refuse it too."""
    res = LoadResult()
    try:
        data = load(text, source)
    except YamlError as exc:
        res.errors.append(SchemaError(exc.mark, "", exc.message))
        return res
    errs: list[SchemaError] = []
    warns: list[SchemaError] = []
    if is_cloud_config(text):
        try:
            data, errs, warns = transpile_cloud_config(data, source)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            mark = data.mark if isinstance(data, MarkedDict) else Mark(source, 1, 1)
            res.errors.append(SchemaError(mark, "", f"malformed cloud-config: {exc}"))
            return res
    if data is None and not errs:
        _report_warnings(res, warns, strict)
        return res
    doc: dict[str, Any] = {}
    if not errs:
        doc, more_errs, more_warns = validate(data, source)
        errs, warns = more_errs, warns + more_warns
    _report_warnings(res, warns, strict)
    if errs or (strict and warns):
        res.errors += errs
        return res  # an invalid document does not run at all
    name = doc.get("name") or source
    res.documents.append(Document(source, str(name), doc.get("stages") or {}, doc.get("install")))
    return res


def _report_warnings(res: LoadResult, warns: list[SchemaError], strict: bool) -> None:
    if strict:
        for w in warns:
            w.warning = False
        res.errors += warns
    else:
        for w in warns:
            res.warn(w)


def _set_path(obj: dict[str, Any], path: str, value: str) -> bool:
    """Assign value at a jq-like path (a.b[0].c); False when the path is not valid."""
    tokens = re.findall(r"([A-Za-z_][A-Za-z0-9_.-]*?)(?=\.|\[|$)|\[(\d+)\]|(\.)", path)
    if "".join(a or (f"[{b}]" if b else "") or c for a, b, c in tokens) != path:
        return False
    keys: list[str | int] = [a if a else int(b) for a, b, c in tokens if not c]
    cur: Any = obj
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        nxt: Any = value if last else ([] if isinstance(keys[i + 1], int) else {})
        if isinstance(k, int):
            if not isinstance(cur, list) or k > MAX_INDEX:
                return False
            while len(cur) <= k:
                cur.append(None)
            if last or cur[k] is None:
                cur[k] = nxt
            cur = cur[k]
        else:
            if not isinstance(cur, dict):
                return False
            if last or k not in cur:
                cur[k] = nxt
            cur = cur[k]
    return True


def parse_dot_notation(cmdline: str) -> dict[str, Any]:
    """Kernel cmdline → document: `stages.boot[0].commands[0]="echo hi"`. Tokens that
    are not cloud-config paths (console=…, rd.*) are ignored, as yip does."""
    out: dict[str, Any] = {}
    try:
        tokens = shlex.split(cmdline)
    except ValueError:
        tokens = cmdline.split()
    for tok in tokens:
        key, sep, value = tok.partition("=")
        key = key.strip('"')
        if not (key.startswith("stages.") or key == "name"):
            continue
        _set_path(out, key, value.strip('"') if sep else "true")
    return out


def load_cmdline(
    cmdline: str, source: str = "/proc/cmdline", *, strict: bool = False
) -> LoadResult:
    data = parse_dot_notation(cmdline)
    if not data:
        return LoadResult()
    # Null items (index gaps) are no-ops, as in yip.
    for stage, steps in list((data.get("stages") or {}).items()):
        if isinstance(steps, list):
            data["stages"][stage] = [s for s in steps if s is not None]
    doc, errs, warns = validate(data, source)
    res = LoadResult(errors=errs)
    _report_warnings(res, warns, strict)
    if not res.errors:
        res.documents.append(Document(source, source, doc.get("stages") or {}))
    return res


def _files_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml"))


def load_source(src: str, *, strict: bool = False) -> LoadResult:
    """One argument: a directory, a file, an http(s) URL, or '-' for stdin."""
    try:
        return _load_source(src, strict)
    except Exception as exc:  # a loader bug must not take the other sources down
        err = SchemaError(None, src, f"cannot load: {type(exc).__name__}: {exc}")
        return LoadResult(errors=[err])


def _load_source(src: str, strict: bool) -> LoadResult:
    res = LoadResult()
    if src == "-":
        return load_text(sys.stdin.read(MAX_FILE_BYTES), "<stdin>", strict=strict)
    if re.match(r"^https?://", src):
        import urllib.error  # only sources given as URLs need the HTTP stack
        import urllib.request

        try:
            with urllib.request.urlopen(src, timeout=30) as r:
                raw = r.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise OSError(f"larger than {MAX_FILE_BYTES} bytes")
            text = raw.decode()
        except (urllib.error.URLError, OSError, UnicodeDecodeError) as exc:
            res.errors.append(SchemaError(None, src, f"cannot fetch: {exc}"))
            return res
        return load_text(text, src, strict=strict)
    p = Path(src)
    if p.is_dir():
        files = _files_in(p)
        if len(files) > MAX_FILES:
            res.errors.append(
                SchemaError(
                    None, src, f"{len(files)} cloud-config files; only the first {MAX_FILES} load"
                )
            )
        for f in files[:MAX_FILES]:
            res.extend(load_file(f, strict=strict))
        return res
    if p.exists() or p.is_symlink():
        return load_file(p, strict=strict)
    res.errors.append(SchemaError(None, src, "no such file, directory or URL"))
    return res


def load_file(path: Path, *, strict: bool = False) -> LoadResult:
    """One file's document; whatever goes wrong with it stays with it."""
    res = LoadResult()
    try:
        text = _read_regular(path)
    except _NotRegular as exc:
        if stat.S_ISDIR(exc.mode):
            return res  # a directory named like a config (walked on its own)
        skipped = SchemaError(Mark(str(path), 1, 1), "", "not a regular file: skipped")
        if strict:
            res.errors.append(skipped)
        else:
            res.warn(skipped)
        return res
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult(errors=[SchemaError(Mark(str(path), 1, 1), "", f"cannot read: {exc}")])
    try:
        return load_text(text, str(path), strict=strict)
    except Exception as exc:  # a loader bug must not take the directory's other files down
        err = SchemaError(Mark(str(path), 1, 1), "", f"cannot load: {type(exc).__name__}: {exc}")
        return LoadResult(errors=[err])


class _NotRegular(Exception):
    def __init__(self, mode: int) -> None:
        super().__init__(stat.filemode(mode))
        self.mode = mode


def _read_regular(path: Path) -> str:
    """Text of a regular file of at most MAX_FILE_BYTES. Anything else (FIFO, device,
    socket) is refused before it is opened; O_NONBLOCK guards against a swap between
    the check and the open."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(st.st_mode)
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise OSError(f"larger than {MAX_FILE_BYTES} bytes: refused")
    return raw.decode()
