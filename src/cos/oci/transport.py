"""What every transport call shares: registry environment, errors, layout lookups."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cos.errors import ImageError


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
