"""cos inspect and cos pull-image: look at an image, or unpack it into a tree."""

from __future__ import annotations

import gzip
import json
import logging
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from cos import events
from cos.config import Config
from cos.errors import ImageError, UsageError
from cos.log import step
from cos.oci.contain import remove_tree
from cos.oci.digest import blob_path, short_digest
from cos.oci.image import LocalImage, unpack
from cos.oci.reference import parse_ref
from cos.oci.store import fetch

log = logging.getLogger("cos")
_OS_RELEASE = ("usr/lib/os-release", "etc/os-release")


def _blob(image: LocalImage, digest: str) -> Path:
    return blob_path(image.layout, digest)


def _json_blob(image: LocalImage, digest: str) -> dict[str, Any]:
    try:
        data = json.loads(_blob(image, digest).read_bytes())
    except (OSError, ValueError) as exc:
        raise ImageError(f"{image.ref}: unreadable blob {short_digest(digest)} ({exc})") from exc
    if not isinstance(data, dict):
        raise ImageError(f"{image.ref}: blob {short_digest(digest)} is not a JSON object")
    return data


def _open_layer(path: Path) -> BinaryIO:
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller
    magic = f.read(2)
    f.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    return f


def _parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def os_release(image: LocalImage, layers: list[str]) -> dict[str, str]:
    """os-release of the image: the topmost layer holding it wins (one symlink hop)."""
    wanted = list(_OS_RELEASE)
    for digest in reversed(layers):
        try:
            with _open_layer(_blob(image, digest)) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    name = member.name.lstrip("./").lstrip("/")
                    if name not in wanted:
                        continue
                    if member.issym():
                        target = PurePosixPath(name).parent / member.linkname
                        if member.linkname.startswith("/"):
                            target = PurePosixPath(member.linkname.lstrip("/"))
                        parts: list[str] = []
                        for part in target.parts:
                            if part == "..":
                                if parts:
                                    parts.pop()
                            elif part != ".":
                                parts.append(part)
                        wanted = ["/".join(parts)]
                        continue
                    if member.isfile():
                        fileobj = tar.extractfile(member)
                        if fileobj is not None:
                            return _parse_os_release(fileobj.read(65536).decode("utf-8", "replace"))
        except (OSError, tarfile.TarError, EOFError) as exc:
            raise ImageError(
                f"{image.ref}: layer {short_digest(digest)} is unreadable ({exc})"
            ) from exc
    return {}


def describe(image: LocalImage) -> dict[str, Any]:
    manifest = _json_blob(image, image.digest)
    if "manifests" in manifest:
        raise ImageError(f"{image.ref}: an image index, not an image", hint="pass --platform")
    config = _json_blob(image, str(manifest.get("config", {}).get("digest")))
    layers = [
        {"digest": x.get("digest"), "size": x.get("size"), "media_type": x.get("mediaType")}
        for x in manifest.get("layers", [])
    ]
    return {
        "reference": str(image.ref),
        "digest": image.digest,
        "os": config.get("os"),
        "architecture": config.get("architecture"),
        "created": config.get("created"),
        "labels": (config.get("config") or {}).get("Labels") or {},
        "layers": layers,
        "size": sum(int(x["size"] or 0) for x in layers),
        "os_release": os_release(image, [str(x["digest"]) for x in layers]),
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
