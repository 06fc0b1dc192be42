"""Pulling an image into a local OCI layout and unpacking it into a tree.

This first implementation drives skopeo (transport, auth, TLS, retries) and umoci
(layer application with whiteouts and ownership): both are well-kept tools that
already handle the hard cases. The digest recorded is the registry's manifest
digest, the one `skopeo inspect` reports and signatures refer to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.errors import ImageError, ToolError
from cos.oci.reference import ImageRef


@dataclass(frozen=True)
class LocalImage:
    ref: ImageRef  # what the user asked for
    layout: Path  # OCI layout holding it
    tag: str  # tag inside the layout
    digest: str  # manifest digest


def layout_digest(layout: Path, tag: str) -> str | None:
    """Manifest digest of tag in an OCI layout (None if the tag is not there)."""
    try:
        index = json.loads((layout / "index.json").read_text())
        for m in index.get("manifests", []):
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                return str(m["digest"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ImageError(
            f"{layout} is not a valid OCI layout (index.json: {exc})",
            hint="rebuild or re-copy the layout",
        ) from exc
    return None


# What skopeo needs to find credentials, proxies and CAs; passed through env (never argv).
_REGISTRY_ENV = (
    "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR",
    "DOCKER_CONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def registry_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _REGISTRY_ENV if k in os.environ}


def _cache_tag(ref: ImageRef) -> str:
    return (
        re.sub(r"[^A-Za-z0-9_.-]", "_", str(ref))[:100]
        + "-"
        + hashlib.sha256(str(ref).encode()).hexdigest()[:8]
    )


def unreadable(ref: ImageRef, exc: ToolError, tls_verify: bool) -> ImageError:
    """The error for a registry that did not give us the image (last line of skopeo)."""
    detail = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else str(exc)
    return ImageError(
        f"cannot read image {ref}: {detail}",
        hint="check the reference and that the registry is reachable"
        + ("" if not tls_verify else " (plain-HTTP registry? add --tls-verify=false)"),
    )


def fetch(ref: ImageRef, cache: Path, tls_verify: bool = True) -> LocalImage:
    """Make the image available in an OCI layout (the cache for registry images)."""
    if ref.transport == "oci":
        layout = Path(ref.name)
        tag = ref.tag or "latest"
        if not (layout / "index.json").is_file():
            raise ImageError(
                f"{ref}: {layout} is not an OCI layout (no index.json)",
                hint="point oci: at a directory written by skopeo, buildah or umoci",
            )
        digest = layout_digest(layout, tag)
        if digest is None:
            raise ImageError(f"{ref}: tag {tag!r} not found in {layout}", hint="check the tag")
        return LocalImage(ref, layout, tag, digest)
    tls = f"--tls-verify={'true' if tls_verify else 'false'}"
    try:
        info = json.loads(
            runner.run(["skopeo", "inspect", tls, ref.skopeo], env=registry_env()).stdout
        )
    except ToolError as exc:
        raise unreadable(ref, exc, tls_verify) from exc
    digest = str(info["Digest"])
    layout = cache / "oci"
    try:
        layout.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(
            f"cannot create the image cache {layout}: {exc.strerror}",
            hint="set cache-dir in config (or COS_CACHE_DIR) to a writable directory",
        ) from exc
    tag = _cache_tag(ref)
    copy_pinned(ref, digest, layout, tag, tls_verify)
    return LocalImage(ref, layout, tag, digest)


def copy_pinned(ref: ImageRef, digest: str, layout: Path, tag: str, tls_verify: bool) -> None:
    """skopeo copy of ref pinned to digest into layout:tag (blobs already there are kept)."""
    pinned = ImageRef("docker", ref.name, None, digest)
    try:
        runner.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"--src-tls-verify={str(tls_verify).lower()}",
                pinned.skopeo,
                f"oci:{layout}:{tag}",
            ],
            env=registry_env(),
        )
    except ToolError as exc:
        raise ImageError(
            f"pulling {ref} failed: {exc}", hint="rerun with --debug for details"
        ) from exc


def unpack(image: LocalImage, dest: Path) -> None:
    """Apply the layers of image to an empty directory dest (must not exist)."""
    try:
        runner.run(["umoci", "raw", "unpack", "--image", f"{image.layout}:{image.tag}", str(dest)])
    except ToolError as exc:
        raise ImageError(f"unpacking {image.ref} failed: {exc}") from exc
