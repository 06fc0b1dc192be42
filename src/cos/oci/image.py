"""Pulling an image into a local OCI layout and unpacking it into a tree.

This first implementation drives skopeo (transport, auth, TLS, retries) and umoci
(layer application with whiteouts and ownership): both are well-kept tools that
already handle the hard cases. The digest recorded is the registry's manifest
digest, the one `skopeo inspect` reports and signatures refer to.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cos import run as runner
from cos.errors import ImageError, ToolError
from cos.oci.reference import ImageRef
from cos.oci.signatures import require_signed
from cos.oci.transport import layout_digest, registry_env, unreadable


@dataclass(frozen=True)
class LocalImage:
    ref: ImageRef  # what the user asked for
    layout: Path  # OCI layout holding it
    tag: str  # tag inside the layout
    digest: str  # manifest digest


def _cache_tag(ref: ImageRef) -> str:
    return (
        re.sub(r"[^A-Za-z0-9_.-]", "_", str(ref))[:100]
        + "-"
        + hashlib.sha256(str(ref).encode()).hexdigest()[:8]
    )


def fetch(
    ref: ImageRef,
    cache: Path,
    tls_verify: bool = True,
    key: Path | None = None,
    arch: str | None = None,
) -> LocalImage:
    """Make the image available in an OCI layout (the cache for registry images).

    With key, a cosign signature by it must vouch for the image before it is copied
    anywhere (for an `oci:` layout, its `.sig` tag in the same layout).
    """
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
        if key is not None:
            require_signed(ref, {digest}, key, tls_verify)
        return LocalImage(ref, layout, tag, digest)
    tls = f"--tls-verify={'true' if tls_verify else 'false'}"
    over = ["--override-arch", arch] if arch else []
    try:
        info = json.loads(
            runner.run(["skopeo", *over, "inspect", tls, ref.skopeo], env=registry_env()).stdout
        )
        if key is not None:
            raw = runner.run(
                ["skopeo", "inspect", "--raw", tls, ref.skopeo], env=registry_env()
            ).stdout.encode()
    except ToolError as exc:
        raise unreadable(ref, exc, tls_verify) from exc
    digest = str(info["Digest"])
    if key is not None:
        require_signed(ref, {digest, "sha256:" + hashlib.sha256(raw).hexdigest()}, key, tls_verify)
    layout = cache / "oci"
    try:
        layout.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(
            f"cannot create the image cache {layout}: {exc.strerror}",
            hint="set cache-dir in config (or COS_CACHE_DIR) to a writable directory",
        ) from exc
    tag = _cache_tag(ref)
    copy_pinned(ref, digest, layout, tag, tls_verify, arch)
    return LocalImage(ref, layout, tag, digest)


def copy_pinned(
    ref: ImageRef, digest: str, layout: Path, tag: str, tls_verify: bool, arch: str | None = None
) -> None:
    """skopeo copy of ref pinned to digest into layout:tag (blobs already there are kept)."""
    pinned = ImageRef("docker", ref.name, None, digest)
    try:
        runner.run(
            [
                "skopeo",
                *(["--override-arch", arch] if arch else []),
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
