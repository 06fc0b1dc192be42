"""cos inspect and cos pull-image: look at an image, or unpack it into a tree."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cos import events
from cos.config import Config
from cos.errors import ImageError, UsageError
from cos.log import step
from cos.oci.contain import remove_tree
from cos.oci.image import LocalImage, unpack
from cos.oci.layout import LayerBlob, OciLayout
from cos.oci.reference import parse_ref
from cos.oci.store import fetch
from cos.oci.streams import RECOPY, CappedTarInfo, Source, TarStream, decompressor, entries

log = logging.getLogger("cos")
_OS_RELEASE = ("usr/lib/os-release", "etc/os-release")


def _verify_blob(layer: LayerBlob) -> None:
    """The layer blob is the one its manifest names (read before any of it is shown)."""
    h, n = hashlib.sha256(), 0
    try:
        with open(layer.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
    except OSError as exc:
        raise ImageError(f"{layer.label}: cannot read its blob ({exc.strerror})") from exc
    if n != layer.size or f"sha256:{h.hexdigest()}" != layer.digest:
        raise ImageError(f"{layer.label}: blob does not match its digest", hint=RECOPY)


def _parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _follow(name: str, linkname: str) -> str:
    """Where a symlink at name points, as a path in the image (.. stops at its root)."""
    target = PurePosixPath(name).parent / linkname
    if linkname.startswith("/"):
        target = PurePosixPath(linkname.lstrip("/"))
    parts: list[str] = []
    for part in target.parts:
        if part == "..":
            if parts:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def os_release(layers: list[LayerBlob]) -> dict[str, str]:
    """os-release of the image: the topmost layer holding it wins (one symlink hop).

    Headers are parsed with the unpacker's limits, so a hostile layer costs no more
    memory here than it does when unpacked.
    """
    wanted = list(_OS_RELEASE)
    for layer in reversed(layers):
        _verify_blob(layer)
        try:
            with open(layer.path, "rb") as f:
                stream = TarStream(decompressor(Source(f), layer.media_type, layer.label))
                with tarfile.open(
                    fileobj=stream, mode="r|", tarinfo=CappedTarInfo, errors="surrogateescape"
                ) as tar:
                    for member in entries(tar):
                        name = member.name.lstrip("./").lstrip("/")
                        if name not in wanted:
                            continue
                        if member.issym():
                            wanted = [_follow(name, member.linkname)]
                        elif member.isfile() and (data := tar.extractfile(member)) is not None:
                            return _parse_os_release(data.read(65536).decode("utf-8", "replace"))
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise ImageError(f"{layer.label} is unreadable ({exc})", hint=RECOPY) from exc
    return {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def describe(image: LocalImage) -> dict[str, Any]:
    """What an image is, read through its digests: nothing shown is unverified."""
    if not image.digest:
        raise ImageError(f"{image.ref}: a tree, not an image", hint="inspect reads OCI images")
    layout = OciLayout(image.layout)
    manifest = layout.read_json(image.digest, "manifest")
    if "manifests" in manifest:
        raise ImageError(f"{image.ref}: an image index, not an image", hint="pass --platform")
    layers = layout.image_layers(image.digest)  # config and diff_ids checked as for unpacking
    config = layout.read_json(manifest["config"]["digest"], "config")
    inner = config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    return {
        "reference": str(image.ref),
        "digest": image.digest,
        "os": _text(config.get("os")),
        "architecture": _text(config.get("architecture")),
        "created": _text(config.get("created")),
        "labels": {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        "layers": [
            {"digest": x.digest, "size": x.size, "media_type": x.media_type} for x in layers
        ],
        "size": sum(x.size or 0 for x in layers),
        "os_release": os_release(layers),
    }


def inspect_image(image: str, cfg: Config, as_json: bool) -> dict[str, Any]:
    ref = parse_ref(image)
    with step(f"Reading {ref}"):
        local = fetch(ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
        info = describe(local)
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return info
    rel = info["os_release"]
    print(f"Image:    {info['reference']}")
    print(f"Digest:   {info['digest']}")
    print(f"Platform: {info['os']}/{info['architecture']}")
    print(f"Created:  {info['created']}")
    print(f"OS:       {rel.get('PRETTY_NAME') or rel.get('NAME') or 'unknown'}")
    for k, v in sorted(info["labels"].items()):
        print(f"Label:    {k}={v}")
    print(f"Layers:   {len(info['layers'])}, {info['size'] / 1048576:.1f} MiB compressed")
    for x in info["layers"]:
        print(f"  {x['digest']}  {int(x['size'] or 0) / 1048576:9.1f} MiB")
    return info


@dataclass(frozen=True)
class PullRequest:
    image: str
    dest: Path


def pull_image(req: PullRequest, cfg: Config) -> LocalImage:
    """Unpack an image into DEST: a new directory, an empty one or an empty mount point.

    What the user named is never removed: the tree is built in a private directory
    beside DEST and renamed onto it (rename replaces an empty directory atomically), and
    an empty mount point, which cannot be renamed onto, is filled in place and emptied
    again if the unpack fails.
    """
    dest = req.dest.absolute()
    in_place = _check_dest(req.dest, dest)
    ref = parse_ref(req.image)
    with step(f"Pulling {ref}"):
        local = fetch(ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
    with step(f"Unpacking into {dest}"):
        if in_place:
            unpack(local, dest)
        else:
            _unpack_beside(local, dest)
    log.info("Unpacked %s (%s) into %s", ref, local.digest, dest)
    events.summary(image=str(ref), digest=local.digest, dest=str(dest))
    return local


def _check_dest(given: Path, dest: Path) -> bool:
    """Refuse a DEST that cannot take the tree before anything is fetched; True when it is
    an empty mount point (filled in place)."""
    if given.name in ("", ".", ".."):
        raise UsageError(
            f"{str(given)!r} does not name a new directory",
            hint="give the directory to create, e.g. ./rootfs",
        )
    try:
        name_max = os.pathconf(dest.parent, "PC_NAME_MAX")
        if len(os.fsencode(dest.name)) > name_max:
            raise UsageError(
                f"the name {dest.name[:40]}… is longer than {name_max} bytes",
                hint="choose a shorter directory name",
            )
        st = os.lstat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise UsageError(
                f"{dest.parent} does not exist", hint="create the parent directory first"
            ) from None
        return False
    except OSError as exc:
        raise UsageError(f"cannot use {dest}: {exc.strerror}", hint="check the path") from exc
    if not stat.S_ISDIR(st.st_mode) or _holds_anything(dest):
        raise UsageError(
            f"{dest} exists and is not an empty directory", hint="pull into a new directory"
        )
    return os.path.ismount(dest)


def _holds_anything(path: Path) -> bool:
    """True unless path is empty (an empty lost+found, as on a new filesystem, is allowed)."""
    try:
        names = os.listdir(path)
        return any(n != "lost+found" or os.listdir(path / n) for n in names)
    except OSError:
        return True


def _unpack_beside(local: LocalImage, dest: Path) -> None:
    try:
        work = Path(tempfile.mkdtemp(prefix=".cos-pull-", dir=dest.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot write in {dest.parent}: {exc.strerror}", hint="check its permissions"
        ) from exc
    try:
        unpack(local, work / "rootfs")
        try:
            os.rename(work / "rootfs", dest)  # a half tree never carries the name asked for
        except OSError as exc:
            raise UsageError(
                f"cannot move the tree to {dest}: {exc.strerror}",
                hint="DIR must stay absent or empty while the image is pulled",
            ) from exc
    finally:
        remove_tree(work)
