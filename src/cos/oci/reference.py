"""Image references in the spellings users know from skopeo and podman."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from cos.errors import ImageError, StateError
from cos.oci.digest import DIGEST_RE

_NAME = re.compile(
    r"^(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?)/"
    r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    rf"(?:@(?P<digest>{DIGEST_RE.pattern}))?$"
)


class Transport(StrEnum):
    """Where an image comes from, spelled as skopeo spells the prefix."""

    DOCKER = "docker"  # a registry
    OCI = "oci"  # an OCI layout directory
    OCI_ARCHIVE = "oci-archive"  # a tar of an OCI layout
    DIR = "dir"  # an unpacked root filesystem


@dataclass(frozen=True)
class ImageRef:
    transport: Transport
    name: str  # host/repo for docker, directory for oci and dir, file for oci-archive
    tag: str | None = None
    digest: str | None = None

    @property
    def skopeo(self) -> str:
        if self.transport in (Transport.OCI, Transport.OCI_ARCHIVE):
            return f"{self.transport}:{self.name}" + (f":{self.tag}" if self.tag else "")
        if self.transport == Transport.DIR:
            return f"dir:{self.name}"
        ref = f"docker://{self.name}"
        if self.tag:
            ref += f":{self.tag}"
        if self.digest:
            ref += f"@{self.digest}"
        return ref

    def __str__(self) -> str:
        if self.transport == Transport.OCI:
            return f"oci:{self.name}:{self.tag or 'latest'}"
        if self.transport in (Transport.OCI_ARCHIVE, Transport.DIR):
            return self.skopeo
        s = (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )
        return s


def parse_ref(text: str) -> ImageRef:
    """Parse `docker://host/repo[:tag][@digest]`, `host/repo[:tag]`, `oci:DIR[:tag]`,
    `oci-archive:FILE[:tag]` and `dir:PATH` (an unpacked tree)."""
    t = text.strip()
    if not t:
        raise ImageError("empty image reference", hint="e.g. 127.0.0.1:5000/cos/vanilla:latest")
    if t.startswith("oci:"):
        rest = t[4:]
        if not rest:
            raise ImageError(
                f"invalid image reference {text!r}: no directory after oci:",
                hint="use oci:DIR[:tag], e.g. oci:build/oci:vanilla",
            )
        path, _, tag = rest.partition(":")
        return ImageRef(Transport.OCI, path, tag or "latest")
    if t.startswith("oci-archive:"):
        path, _, tag = t[len("oci-archive:") :].partition(":")
        if not path:
            raise ImageError(
                f"invalid image reference {text!r}: no file after oci-archive:",
                hint="use oci-archive:FILE[:tag], e.g. oci-archive:image.tar:v1",
            )
        return ImageRef(Transport.OCI_ARCHIVE, path, tag or None)
    if t.startswith("dir:"):
        if not t[4:]:
            raise ImageError(
                f"invalid image reference {text!r}: no directory after dir:",
                hint="use dir:PATH, an unpacked root filesystem",
            )
        return ImageRef(Transport.DIR, t[4:])
    if t.startswith("docker://"):
        t = t[len("docker://") :]
    elif "://" in t or t.split(":", 1)[0] in ("docker-archive", "containers-storage"):
        raise ImageError(
            f"unsupported image reference {text!r}",
            hint="use docker://host/repo:tag, host/repo:tag, oci:DIR[:tag], "
            "oci-archive:FILE[:tag] or dir:PATH",
        )
    if "@" in t.split("/", 1)[0]:
        raise ImageError(
            "an image reference cannot carry credentials (user:password@)",
            hint="log in with an auth file instead (podman login or docker login writes one)",
        )
    m = _NAME.match(t)
    if not m or ("." not in m["host"] and ":" not in m["host"] and m["host"] != "localhost"):
        raise ImageError(
            f"invalid image reference {text!r}",
            hint="give the registry host explicitly: host[:port]/repo[:tag][@sha256:…]",
        )
    rtag: str | None = m["tag"] or (None if m["digest"] else "latest")
    return ImageRef(Transport.DOCKER, f"{m['host']}/{m['repo']}", rtag, m["digest"])


def require_registry(source: str, action: str, hint: str) -> ImageRef:
    """Parse source; actions that pull on the device take registry references only."""
    ref = parse_ref(source)
    if ref.transport != Transport.DOCKER:
        raise StateError(
            f"{action} pulls from a registry; {ref} is a local {ref.transport}: reference",
            hint=hint,
        )
    return ref
