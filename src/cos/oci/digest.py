"""Content digests: the one place they are checked, hashed, shortened and made into paths.

A digest read from a manifest, an index or a registry reply is untrusted text that
becomes a URL part and a file name under `blobs/`. Only well-formed sha256 digests
pass, so `sha256:../../etc/passwd` can never name a file outside the layout.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cos.errors import ImageError

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_HINT = "only sha256 digests (sha256:<64 hex digits>) are supported"


class DigestError(ImageError):
    """A digest that is not a well-formed sha256 one."""


def check_digest(digest: object, what: str = "") -> str:
    """digest itself if it is `sha256:<64 lowercase hex>`; what names its source in the error."""
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        prefix = f"{what}: " if what else ""
        raise DigestError(f"{prefix}invalid digest {str(digest)[:80]!r}", hint=_HINT)
    return digest


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def short_digest(digest: str) -> str:
    """The algorithm and the first 12 hex digits, as logs and progress lines show it."""
    return digest[:19]


def blob_path(root: Path, digest: str) -> Path:
    """Where an OCI layout rooted at root keeps the blob of digest (checked first)."""
    return Path(root) / "blobs" / "sha256" / check_digest(digest)[len("sha256:") :]
