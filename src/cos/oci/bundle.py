"""Sigstore bundles (v0.3) as cosign v3 attaches them to an image, key-based.

`cosign sign --key` (v3, the default "new bundle format") signs a DSSE envelope over
an in-toto Statement whose subject is the manifest digest, wraps it in a bundle
(`application/vnd.dev.sigstore.bundle.v0.3+json`) and stores the bundle as the one
layer of an OCI 1.1 referrer manifest whose `subject` is the image. Registries
without the referrers API get the referrer listed in an index under the tag
`sha256-<hex>`. A bundle may instead carry a message signature: then the signed
message is the manifest itself, named by its SHA-256 (the digest).

Bundles are parsed as JSON with duplicate keys refused; the signature is checked over
the exact payload bytes before the statement is read, and only the given public key
counts (the bundle's key hint is not trusted). Bundles with a certificate (keyless
signing) are not accepted: no trust root is configured for them. A transparency-log
entry in a bundle is checked by `cos.oci.tlog` when a log key is configured
(`tlog-key`): then only a bundle whose entry proves the log holds its signature counts.

Pure: no registry, no files. Transport lives in `cos.oci.signatures`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from cos.oci import tlog
from cos.oci.cosign import PrivateKey, PublicKey, sign, signature_valid
from cos.oci.digest import check_digest
from cos.oci.jsondoc import load_json

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_PREFIX = "application/vnd.dev.sigstore.bundle"
INTOTO_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPES = ("https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1")
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
MAX_BUNDLE = 1 << 20  # a key-based bundle is under 1 KiB; one with log entries a few KiB
_VERSION = re.compile(
    r"application/vnd\.dev\.sigstore\.bundle(?:\.v0\.(\d+)\+json|\+json;version=0\.(\d+))"
)


def _compact(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_hint(key: PublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64(hashlib.sha256(der).digest())


def statement(digest: str, annotations: Mapping[str, str] | None = None) -> bytes:
    """The in-toto Statement cosign v3 signs (protojson field order, compact)."""
    alg, _, hexd = check_digest(digest, "manifest").partition(":")
    doc = {
        "_type": STATEMENT_TYPES[0],
        "subject": [
            {"digest": {alg: hexd}, "annotations": dict(sorted((annotations or {}).items()))}
        ],
        "predicateType": SIGN_PREDICATE,
        "predicate": {},
    }
    return _compact(doc)


def make_bundle(
    key: PrivateKey, digest: str, annotations: Mapping[str, str] | None = None
) -> bytes:
    """A v0.3 bundle with a DSSE envelope over the statement, as `cosign sign --key` writes."""
    payload = statement(digest, annotations)
    doc = {
        "mediaType": BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(key.public_key())}},
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": INTOTO_TYPE,
            "signatures": [{"sig": _b64(sign(key, pae(INTOTO_TYPE, payload)))}],
        },
    }
    return _compact(doc)


def referrer_manifest(bundle: bytes, subject: Mapping[str, Any], created: str) -> bytes:
    """The OCI 1.1 referrer manifest holding one bundle, in cosign's (Go's) key order."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": EMPTY_TYPE,
            "size": 2,
            "digest": EMPTY_DIGEST,
            "artifactType": BUNDLE_TYPE,
        },
        "layers": [
            {
                "mediaType": BUNDLE_TYPE,
                "size": len(bundle),
                "digest": "sha256:" + hashlib.sha256(bundle).hexdigest(),
            }
        ],
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": SIGN_PREDICATE,
            "org.opencontainers.image.created": created,
        },
        "subject": dict(subject),
        "artifactType": BUNDLE_TYPE,
    }
    return _compact(doc)


# -- reading ------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _obj(doc: Any, name: str) -> dict[str, Any]:
    value = doc.get(name) if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise ValueError(f"no {name!r} object")
    return value


def _bytes(doc: Mapping[str, Any], name: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, str):
        raise ValueError(f"no {name!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # protojson also accepts URL-safe base64
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@dataclass(frozen=True)
class Bundle:
    """A parsed bundle: what was signed, by which signature, with which log entries."""

    doc: dict[str, Any]

    @property
    def tlog_entries(self) -> list[dict[str, Any]]:
        entries = self.doc.get("verificationMaterial", {}).get("tlogEntries")
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def parse(data: bytes) -> Bundle:
    """The bundle document (ValueError when it is not a v0.3+ key-based bundle)."""
    if len(data) > MAX_BUNDLE:
        raise ValueError("bundle too large")
    doc = load_json(data, _no_duplicates)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    m = _VERSION.fullmatch(str(doc.get("mediaType", "")))
    if not m or int(m.group(1) or m.group(2)) < 3:
        raise ValueError(f"unsupported bundle media type {doc.get('mediaType')!r}")
    material = _obj(doc, "verificationMaterial")
    if "publicKey" not in material:
        raise ValueError("the bundle holds a certificate (keyless signing is not supported)")
    return Bundle(doc)


def _prehashed_valid(key: PublicKey, digest: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:
            return False  # Ed25519 signs messages, not digests
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_digests(key: PublicKey, bundle: Bundle) -> tuple[set[str], tlog.Signed]:
    """The manifest digests the bundle's signature by key vouches for, and that
    signature with what it covers (to match a transparency log's record of it).

    Raises ValueError naming why it vouches for nothing: no valid signature, or a
    malformed or foreign statement. The signature is checked before anything signed
    is parsed.
    """
    doc = bundle.doc
    if "dsseEnvelope" in doc:
        env = _obj(doc, "dsseEnvelope")
        payload, ptype = _bytes(env, "payload"), env.get("payloadType")
        if ptype != INTOTO_TYPE:
            raise ValueError(f"DSSE payload type {ptype!r}")
        sigs = env.get("signatures")
        if not isinstance(sigs, list) or not sigs:
            raise ValueError("no DSSE signature")
        message = pae(INTOTO_TYPE, payload)
        valid = [
            sig
            for sig in (_bytes(s, "sig") for s in sigs if isinstance(s, dict))
            if signature_valid(key, message, sig)
        ]
        if not valid:
            raise InvalidSignature
        st = load_json(payload, _no_duplicates)
        if not isinstance(st, dict) or st.get("_type") not in STATEMENT_TYPES:
            raise ValueError("the payload is not an in-toto statement")
        if st.get("predicateType") != SIGN_PREDICATE:
            raise ValueError(f"an attestation ({st.get('predicateType')}), not a signature")
        out = set()
        for subject in st.get("subject") or []:
            hexd = subject.get("digest", {}).get("sha256") if isinstance(subject, dict) else None
            if isinstance(hexd, str) and re.fullmatch(r"[0-9a-f]{64}", hexd):
                out.add(f"sha256:{hexd}")
        return out, tlog.Signed(key, valid[0], payload=payload)
    if "messageSignature" in doc:
        ms = _obj(doc, "messageSignature")
        md = _obj(ms, "messageDigest")
        if md.get("algorithm") != "SHA2_256":
            raise ValueError(f"message digest algorithm {md.get('algorithm')!r}")
        digest = _bytes(md, "digest")
        if len(digest) != 32:
            raise ValueError("message digest is not SHA-256")
        signature = _bytes(ms, "signature")
        if not _prehashed_valid(key, digest, signature):
            raise InvalidSignature
        return {"sha256:" + digest.hex()}, tlog.Signed(key, signature, digest=digest)
    raise ValueError("neither a DSSE envelope nor a message signature")


def verify(
    key: PublicKey, digests: set[str], blobs: list[bytes], log: tlog.LogKey | None = None
) -> tuple[str | None, Bundle | None]:
    """(None, the bundle) when one bundle's signature by key vouches for one of digests
    (and, with log, that log's entry in it proves the log holds that signature), else
    (the last reason none does, None); reasons read like `cosign.verify`'s."""
    reason = "the image is not signed"
    for data in blobs:
        try:
            b = parse(data)
            got, signed = signed_digests(key, b)
            if got & digests and log is not None:
                why = tlog.verify(b.tlog_entries, log, signed)
                if why is not None:
                    reason = why
                    continue
        except InvalidSignature:
            reason = "no signature verifies with the given key"
            continue
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            reason = f"a signature bundle is malformed ({exc})"
            continue
        if got & digests:
            return None, b
        reason = f"the signature is for {', '.join(sorted(got)) or 'no image'}, not this image"
    return reason, None
