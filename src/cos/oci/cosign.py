"""cosign-compatible keys, payloads and signatures (the key-based "tag" format).

An image signature is an ECDSA (or RSA / Ed25519) signature over the exact bytes of
a simple-signing payload that names the manifest digest. cosign stores it in the
image's repository under the tag `sha256-<hex>.sig`: an OCI manifest with one layer
per signature, the payload as the layer blob and the base64 signature in the layer
annotation `dev.cosignproject.cosign/signature`. Writing the same shapes means
`cosign verify --key` accepts what `cos sign` made and `cos` accepts what cosign made.

The private key file is cosign's own format: PEM `ENCRYPTED SIGSTORE PRIVATE KEY`
holding JSON {kdf: scrypt, cipher: nacl/secretbox, ciphertext}; the plaintext is a
PKCS#8 DER key. Verification needs only `cryptography`; signing with an encrypted
key also needs PyNaCl (XSalsa20-Poly1305), which is imported only when signing.

Everything here is pure: no registry, no files except the key readers. Transport of
signatures lives in `cos.oci.signatures`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from cos.errors import ImageError
from cos.oci.digest import check_digest, sha256_digest
from cos.oci.jsondoc import load_json

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
_PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.S)
# cosign's accepted scrypt cost parameters (legacy, default, stronger).
_SCRYPT_N = (32768, 65536, 131072)
SCRYPT_N_DEFAULT = 65536
MAX_PAYLOAD = 64 * 1024  # a simple-signing payload is a few hundred bytes

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(ImageError):
    """A key file that cannot be used (wrong format, wrong password)."""


def sig_tag(digest: str) -> str:
    """The tag cosign stores the signatures of `digest` under."""
    return check_digest(digest, "manifest").replace(":", "-") + ".sig"


# -- keys -------------------------------------------------------------------------------


def load_public_key(path: Path) -> PublicKey:
    """The PEM public key a signature must verify against (cosign.pub)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read the public key {path}: {exc.strerror}",
            hint="pass the cosign.pub of the signer with --cosign-key",
        ) from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            f"{path} is not a PEM public key",
            hint="use the cosign.pub written by `cos generate-key-pair` or cosign",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{path}: unsupported key type {type(key).__name__}")
    return key


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} missing")
    return base64.b64decode(value, validate=True)


def load_private_key(path: Path, password: bytes) -> PrivateKey:
    """Decrypt a cosign.key (scrypt + nacl/secretbox around PKCS#8)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"cannot read the private key {path}: {getattr(exc, 'strerror', None) or exc}",
            hint="pass the cosign.key written by `cos generate-key-pair` or cosign",
        ) from exc
    m = _PEM.search(text)
    if not m or m.group(1) not in _PEM_TYPES:
        raise KeyFileError(
            f"{path} is not an encrypted cosign private key",
            hint="expected a PEM block 'ENCRYPTED SIGSTORE PRIVATE KEY'",
        )
    try:
        doc = load_json(base64.b64decode("".join(m.group(2).split()), validate=True))
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
            raise ValueError(f"unsupported kdf/cipher {kdf.get('name')}/{cipher.get('name')}")
        params = kdf["params"]
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
        if n not in _SCRYPT_N or r != 8 or p != 1:
            raise ValueError(f"unsupported scrypt parameters N={n} r={r} p={p}")
        salt = _b64(kdf.get("salt"), "salt")
        nonce = _b64(cipher.get("nonce"), "nonce")
        box = _b64(doc.get("ciphertext"), "ciphertext")
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise KeyFileError(f"{path}: damaged cosign key ({exc})") from exc
    key = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=512 * 1024 * 1024, dklen=32)
    try:
        from nacl.exceptions import CryptoError
        from nacl.secret import SecretBox
    except ImportError as exc:  # pragma: no cover - packaging guarantees it
        raise KeyFileError(
            "signing needs PyNaCl (python3-nacl)", hint="install python3-nacl"
        ) from exc
    try:
        der = SecretBox(key).decrypt(box, nonce)
    except (CryptoError, ValueError) as exc:
        raise KeyFileError(
            f"cannot decrypt {path}: wrong password",
            hint="set COSIGN_PASSWORD to the key's password",
        ) from exc
    try:
        priv = serialization.load_der_private_key(der, password=None)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: the decrypted key is not PKCS#8 ({exc})") from exc
    if not isinstance(
        priv, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise KeyFileError(f"{path}: unsupported key type {type(priv).__name__}")
    return priv


def encrypt_private_key(key: PrivateKey, password: bytes, n: int = SCRYPT_N_DEFAULT) -> bytes:
    """cosign.key bytes for key (what `cosign generate-key-pair` writes)."""
    from nacl.secret import SecretBox

    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(32)
    nonce = os.urandom(24)
    box_key = hashlib.scrypt(password, salt=salt, n=n, r=8, p=1, maxmem=512 * 1024 * 1024, dklen=32)
    ciphertext = SecretBox(box_key).encrypt(der, nonce).ciphertext
    doc = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": 8, "p": 1},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    ).encode()


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- payloads and signatures ------------------------------------------------------------


def payload(repository: str, digest: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """The simple-signing payload, byte for byte as cosign writes it (Go field order)."""
    check_digest(digest, "manifest")
    doc = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": dict(annotations) if annotations else None,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def sign(key: PrivateKey, data: bytes) -> bytes:
    """Signature bytes over data: ECDSA DER / RSA PKCS#1 v1.5 with SHA-256, or Ed25519."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def signature_valid(key: PublicKey, data: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k.lower() in (x.lower() for x in out):
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _get(doc: Mapping[str, Any], name: str) -> Any:
    """Go decodes JSON keys case-insensitively; so does this (duplicates were refused)."""
    for k, v in doc.items():
        if k.lower() == name.lower():
            return v
    return None


def signed_digest(data: bytes) -> str:
    """The manifest digest a verified payload vouches for (ValueError if malformed)."""
    if len(data) > MAX_PAYLOAD:
        raise ValueError("payload too large")
    doc = load_json(data, _pairs_no_duplicates)
    critical = _get(doc, "critical") if isinstance(doc, dict) else None
    if not isinstance(critical, dict):
        raise ValueError("payload has no 'critical' section")
    if _get(critical, "type") != SIGNATURE_TYPE:
        raise ValueError(f"payload type is {_get(critical, 'type')!r}")
    image = _get(critical, "image")
    digest = _get(image, "docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest, str):
        raise ValueError("payload names no manifest digest")
    return digest


@dataclass(frozen=True)
class Signature:
    """One signature layer of a `.sig` manifest, with its payload bytes."""

    payload: bytes
    signature_b64: str
    payload_digest: str  # the layer descriptor's digest
    payload_size: int


def verify(key: PublicKey, digests: set[str], signatures: list[Signature]) -> str | None:
    """The first reason none verifies, or None when one signature vouches for a digest.

    Order matters: the blob is checked against its descriptor, then the signature
    over the exact bytes, and only then is the JSON parsed.
    """
    reason = "the image is not signed"
    for s in signatures:
        if sha256_digest(s.payload) != s.payload_digest or len(s.payload) != s.payload_size:
            reason = "a signature payload does not match its digest"
            continue
        try:
            raw = base64.b64decode(s.signature_b64, validate=True)
        except (binascii.Error, ValueError):
            reason = "a signature is not valid base64"
            continue
        if not signature_valid(key, s.payload, raw):
            reason = "no signature verifies with the given key"
            continue
        try:
            got = signed_digest(s.payload)
        except ValueError as exc:
            reason = f"a signed payload is malformed ({exc})"
            continue
        if got in digests:
            return None
        reason = f"the signature is for {got}, not this image"
    return reason
