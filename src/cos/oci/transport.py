"""What every transport call shares: registry environment, errors, layout lookups."""

from __future__ import annotations

import os
from pathlib import Path

from cos.oci.layout import OciLayout


def layout_digest(layout: Path, tag: str) -> str | None:
    """Manifest digest of tag in an OCI layout (None if the tag is not there)."""
    return OciLayout(layout).resolve(tag)


# What skopeo needs to find credentials, registries.conf, proxies and CAs; passed
# through env (never argv).
_REGISTRY_ENV = (
    "REGISTRY_AUTH_FILE",
    "CONTAINERS_REGISTRIES_CONF",
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
