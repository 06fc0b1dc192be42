"""files, directories and downloads."""

from __future__ import annotations

import base64
import gzip
import os
from typing import Any

from cos.cloudinit.plugins.accounts import owner_of
from cos.cloudinit.plugins.base import Context, Errors, PluginError, write_file


def _decode(content: str, encoding: str) -> bytes:
    enc = (encoding or "").lower()
    data = content.encode()
    try:
        if enc in ("b64", "base64"):
            return base64.b64decode(data, validate=False)
        if enc in ("gz", "gzip"):
            return gzip.decompress(data)
        if enc in ("gz+base64", "gzip+base64", "gz+b64", "gzip+b64"):
            return gzip.decompress(base64.b64decode(data))
    except (ValueError, OSError, EOFError) as exc:
        raise PluginError(f"content cannot be decoded as {encoding}: {exc}") from exc
    return data


def _owner(item: dict[str, Any], ctx: Context) -> tuple[int, int]:
    if item.get("ownerstring"):
        return owner_of(ctx, item["ownerstring"])
    return item.get("owner", 0) or 0, item.get("group", 0) or 0


def _mkparents(path: Any, mode: int, uid: int, gid: int) -> None:
    missing = []
    p = path.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        os.chmod(d, mode)
        os.chown(d, uid, gid)


def files(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for f in step.get("files") or []:
        with errors.item(f.get("path")):
            path = ctx.path(f.get("path") or "")
            mode = f.get("permissions") or 0
            uid, gid = _owner(f, ctx)
            data = _decode(f.get("content") or "", f.get("encoding") or "")
            try:
                text = data.decode()
                data = ctx.render(text).encode()
            except UnicodeDecodeError:
                pass  # binary content is written as is
            if not ctx.act(f"write {f['path']} ({len(data)} bytes, mode {mode:o}, {uid}:{gid})"):
                continue
            dmode = mode | 0o100 if mode < 0o700 else mode
            _mkparents(path, dmode, uid, gid)
            write_file(path, data, mode, uid, gid)
    errors.raise_any()


def directories(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for d in step.get("directories") or []:
        with errors.item(d.get("path")):
            path = ctx.path(d.get("path") or "")
            mode = d.get("permissions") or 0
            uid, gid = d.get("owner", 0) or 0, d.get("group", 0) or 0
            if not ctx.act(f"directory {d['path']} (mode {mode:o}, {uid}:{gid})"):
                continue
            if path.exists() and not path.is_dir():
                raise PluginError("exists and is not a directory")
            if not path.exists():
                _mkparents(path, mode, uid, gid)
                path.mkdir()
            os.chmod(path, mode)
            os.chown(path, uid, gid)
    errors.raise_any()


def downloads(step: dict[str, Any], ctx: Context) -> None:
    errors = Errors()
    for d in step.get("downloads") or []:
        with errors.item(d.get("url")):
            url = d.get("url") or ""
            if not url.startswith(("http://", "https://")):
                raise PluginError(f"unsupported URL {url!r} (http or https only)")
            path = ctx.path(d.get("path") or "")
            if not ctx.act(f"download {url} → {d['path']}"):
                continue
            data = ctx.fetch(url, timeout=d.get("timeout") or 60)
            uid, gid = _owner(d, ctx)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_file(path, data, d.get("permissions") or 0o644, uid, gid)
    errors.raise_any()
