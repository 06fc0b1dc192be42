"""cos sign and cos generate-key-pair: cosign-compatible key-based signatures.

Keys and signatures use cosign's formats, so a pipeline can sign with either tool
and machines verify with either. Two signature formats: `old` (the default), the
`.sig` tag every cos and cosign release reads, and `new`, the Sigstore bundle
stored as an OCI referrer that cosign v3 writes by default; a cos older than the
bundle reader refuses an image signed only the new way, so a fleet switches once
its machines read both. The password comes from COSIGN_PASSWORD (the
variable cosign reads) or a prompt on a terminal; it never appears in argv or logs.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cos.config import Config
from cos.errors import ConfigError, ImageError, UsageError
from cos.fsutil import atomic_write
from cos.log import step
from cos.oci import bundle, cosign
from cos.oci.digest import short_digest
from cos.oci.reference import ImageRef, parse_ref
from cos.oci.referrers import push_bundle
from cos.oci.registry import RegistryError
from cos.oci.remote import Repository
from cos.oci.signatures import push_signature
from cos.oci.transport import layout_digest

log = logging.getLogger("cos")


def _password(confirm: bool) -> bytes:
    env = os.environ.get("COSIGN_PASSWORD")
    if env is not None:
        return env.encode()
    if not sys.stdin.isatty():
        raise ConfigError(
            "no password for the private key",
            hint="set COSIGN_PASSWORD (empty for a key without password)",
        )
    first = getpass.getpass("Password for the private key: ")
    if confirm and getpass.getpass("Again: ") != first:
        raise UsageError("the passwords differ", hint="run the command again")
    return first.encode()


def resolve_digest(ref: ImageRef, tls_verify: bool) -> str:
    """The digest the reference names as it stands (an index stays an index: cosign
    signs what it is given)."""
    if ref.transport == "oci":
        digest = layout_digest(Path(ref.name), ref.tag or "latest")
        if digest is None:
            raise ImageError(f"{ref}: tag not found in {ref.name}", hint="check the tag")
        return digest
    if ref.digest:
        return ref.digest
    try:
        # Where the signature goes, not a mirror: a mirror's tag may lag behind.
        raw, _ = Repository(ref, tls_verify, write=True).manifest(ref.tag or "latest")
    except RegistryError as exc:
        raise ImageError(f"cannot read image {ref}: {exc.message}", hint=exc.hint) from exc
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SignRequest:
    image: str
    key: Path
    annotations: dict[str, str]
    bundle_format: str = "old"  # old: the `.sig` tag; new: a Sigstore bundle referrer


def sign_image(req: SignRequest, cfg: Config) -> str:
    """Sign the image's digest and store the signature beside it; returns its ref."""
    ref = parse_ref(req.image)
    if not req.key.is_file():  # before its password is asked for
        raise ImageError(
            f"cannot read the private key {req.key}: not a file",
            hint="pass the cosign.key written by `cos generate-key-pair` or cosign",
        )
    key = cosign.load_private_key(req.key, _password(confirm=False))
    with step(f"Resolving {ref}"):
        digest = resolve_digest(ref, cfg.tls_verify)
    with step(f"Storing the signature of {short_digest(digest)}"):
        if req.bundle_format == "new":
            blob = bundle.make_bundle(key, digest, req.annotations or None)
            where = push_bundle(ref, digest, blob, cfg.tls_verify)
        else:
            data = cosign.payload(ref.name, digest, req.annotations or None)
            signature = base64.b64encode(cosign.sign(key, data)).decode()
            where = push_signature(ref, digest, data, signature, cfg.tls_verify)
    log.info("Signed %s (%s) → %s", ref, digest, where)
    return where


def generate_key_pair(prefix: Path) -> tuple[Path, Path]:
    """Write PREFIX.key (encrypted, 0600) and PREFIX.pub; never overwrite."""
    if prefix.name in ("", ".."):
        raise UsageError(f"{str(prefix)!r} is not a file name prefix", hint="e.g. keys/cosign")
    key_path, pub_path = (
        prefix.with_name(prefix.name + ".key"),
        prefix.with_name(prefix.name + ".pub"),
    )
    for p in (key_path, pub_path):
        if p.exists():
            raise UsageError(f"{p} already exists", hint="remove it or pick another prefix")
    if not key_path.parent.is_dir():
        raise UsageError(f"{key_path.parent} is not a directory", hint="create it first")
    password = _password(confirm=True)
    key = cosign.generate_key()
    atomic_write(key_path, cosign.encrypt_private_key(key, password), mode=0o600)
    atomic_write(pub_path, cosign.public_pem(key), mode=0o644)
    log.info("Private key written to %s, public key to %s", key_path, pub_path)
    return key_path, pub_path
