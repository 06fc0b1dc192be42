"""An independent writer (and checker) of cosign v3 signatures, from the specs alone.

Written from sigstore's BUNDLE_SPEC, the protobuf-specs bundle/DSSE messages and the
in-toto Statement v1 as cosign 3.x emits them (protojson field order, no keyid, key
hint = base64 sha256 of the SPKI DER), and from the OCI distribution spec's
referrers tag schema; it shares no code with cos.oci.bundle or cos.oci.referrers.
`spaced` reproduces the cosign builds whose protojson puts a space after each comma.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY = "application/vnd.oci.empty.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INTOTO = "application/vnd.in-toto+json"


def _enc(doc: Any, spaced: bool) -> bytes:
    text = json.dumps(doc, separators=(", " if spaced else ",", ":"))
    return text.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _split(n: int) -> int:
    """The largest power of two below n (RFC 6962's k)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 Merkle Tree Hash, by its recursive definition."""
    if len(leaves) == 1:
        return _leaf(leaves[0])
    k = _split(len(leaves))
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def _audit_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), by its recursive definition."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if m < k:
        return [*_audit_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_audit_path(m - k, leaves[k:]), _mth(leaves[:k])]


@dataclass
class Log:
    """A transparency log as a bundle records it (Rekor v1 shapes: a `dsse` 0.0.1 or
    `hashedrekord` 0.0.1 body, an inclusion proof, a checkpoint signed as a note whose
    signature starts with the first 4 bytes of the key's SHA-256 SPKI id)."""

    key: ec.EllipticCurvePrivateKey
    before: int = 5  # entries already in the log
    after: int = 6  # entries logged after ours, before the checkpoint
    origin: str = "rekor.test - 2605736670972794746"
    tamper: str = ""  # "proof", "root", "checkpoint-sig", "checkpoint-size", "body", "log-id"

    def key_id(self) -> bytes:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).digest()

    def entry(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        if self.tamper == "other":  # a genuine entry, but of another signed content
            spec = json.loads(json.dumps(spec))
            for part in ("payloadHash", "data"):
                if part in spec:
                    target = spec[part] if part == "payloadHash" else spec[part]["hash"]
                    target["value"] = hashlib.sha256(b"another image").hexdigest()
        body = json.dumps(
            {"apiVersion": "0.0.1", "kind": kind, "spec": spec}, separators=(",", ":")
        ).encode()
        others = [b"other entry %d" % i for i in range(self.before + self.after)]
        leaves = [*others[: self.before], body, *others[self.before :]]
        index, size = self.before, len(leaves)
        path, root = _audit_path(index, leaves), _mth(leaves)
        if self.tamper == "proof":
            path[0] = hashlib.sha256(path[0]).digest()
        if self.tamper == "body":
            body = body.replace(b'"sha256"', b'"sha256" ', 1)
        note = f"{self.origin}\n{size + (self.tamper == 'checkpoint-size')}\n{_b64(root)}\n"
        sig = self.key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        if self.tamper == "checkpoint-sig":
            sig = self.key.sign(b"another note", ec.ECDSA(hashes.SHA256()))
        name = self.origin.split(" ")[0]
        envelope = f"{note}\n\u2014 {name} {_b64(self.key_id()[:4] + sig)}\n"
        log_id = b"\x02" * 32 if self.tamper == "log-id" else self.key_id()
        return {
            "logIndex": str(1000 + index),
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": kind, "version": "0.0.1"},
            "integratedTime": "1764600000",
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": _b64(hashlib.sha256(root).digest() if self.tamper == "root" else root),
                "treeSize": str(size),
                "hashes": [_b64(h) for h in path],
                "checkpoint": {"envelope": envelope},
            },
            "canonicalizedBody": _b64(body),
        }


def _pem_b64(key: ec.EllipticCurvePrivateKey) -> str:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64(pem)


@dataclass
class Writer:
    """How the bundle is made; each field is a way real or forged bundles differ."""

    key: ec.EllipticCurvePrivateKey
    spaced: bool = False  # cosign builds with protojson's random spacing
    old_statement: bool = False  # cosign 3.0.0-3.0.2: no annotations, no predicate
    predicate_type: str = "https://sigstore.dev/cosign/sign/v1"
    message_signature: bool = False  # messageSignature over the manifest digest
    tlog: bool = False  # carry a (made-up) transparency-log entry
    log: Log | None = None  # carry a real entry of this log
    tamper: bool = False  # change the payload after signing
    extra: dict[str, Any] = field(default_factory=dict)

    def statement(self, digest: str) -> bytes:
        alg, hexd = digest.split(":")
        subject: dict[str, Any] = {"digest": {alg: hexd}}
        doc: dict[str, Any] = {"_type": "https://in-toto.io/Statement/v1"}
        if not self.old_statement:
            subject["annotations"] = {}
        doc["subject"] = [subject]
        doc["predicateType"] = self.predicate_type
        if not self.old_statement:
            doc["predicate"] = {}
        return _enc(doc, self.spaced)

    def bundle(self, digest: str) -> bytes:
        pub_der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        material: dict[str, Any] = {"publicKey": {"hint": _b64(hashlib.sha256(pub_der).digest())}}
        if self.tlog:
            material["tlogEntries"] = [
                {
                    "logIndex": "1234",
                    "logId": {"keyId": _b64(b"\x01" * 32)},
                    "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                    "integratedTime": "1764600000",
                    "canonicalizedBody": _b64(b'{"kind":"dsse"}'),
                }
            ]
        doc: dict[str, Any] = {"mediaType": BUNDLE_V03, "verificationMaterial": material}
        if self.message_signature:
            md = bytes.fromhex(digest.split(":")[1])
            sig = self.key.sign(md, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            doc["messageSignature"] = {
                "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(md)},
                "signature": _b64(sig),
            }
            if self.log is not None:
                spec = {
                    "data": {"hash": {"algorithm": "sha256", "value": md.hex()}},
                    "signature": {
                        "content": _b64(sig),
                        "publicKey": {"content": _pem_b64(self.key)},
                    },
                }
                material["tlogEntries"] = [self.log.entry("hashedrekord", spec)]
        else:
            payload = self.statement(digest)
            pae = b"DSSEv1 %d %s %d %s" % (len(INTOTO), INTOTO.encode(), len(payload), payload)
            sig = self.key.sign(pae, ec.ECDSA(hashes.SHA256()))
            if self.log is not None:
                spec = {
                    "envelopeHash": {"algorithm": "sha256", "value": "0" * 64},
                    "payloadHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(payload).hexdigest(),
                    },
                    "signatures": [{"signature": _b64(sig), "verifier": _pem_b64(self.key)}],
                }
                material["tlogEntries"] = [self.log.entry("dsse", spec)]
            if self.tamper:
                payload = payload.replace(b'"predicate"', b'"predicate" ')
            doc["dsseEnvelope"] = {
                "payload": _b64(payload),
                "payloadType": INTOTO,
                "signatures": [{"sig": _b64(sig)}],
            }
        doc.update(self.extra)
        return _enc(doc, self.spaced)


def dsse_verifies(bundle: bytes, key: ec.EllipticCurvePublicKey, digest: str) -> bool:
    """An independent check of a bundle cos wrote: signature, subject, predicate type."""
    doc = json.loads(bundle)
    env = doc["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    ptype = env["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype, len(payload), payload)
    key.verify(base64.b64decode(env["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    st = json.loads(payload)
    return bool(
        doc["mediaType"] == BUNDLE_V03
        and st["_type"] == "https://in-toto.io/Statement/v1"
        and st["predicateType"] == "https://sigstore.dev/cosign/sign/v1"
        and st["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
    )


# -- the registry side, over plain HTTP (the test registry) ---------------------------


def _request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = _request(f"http://{host}/v2/{repo}/blobs/uploads/", "POST", b"")
    assert status == 202, status
    loc = headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    status, _, body = _request(
        f"{loc}{sep}digest={digest}", "PUT", data, {"Content-Type": "application/octet-stream"}
    )
    assert status == 201, (status, body)
    return digest


def _manifest(host: str, repo: str, ref: str, data: bytes, media: str) -> None:
    status, _, body = _request(
        f"http://{host}/v2/{repo}/manifests/{ref}", "PUT", data, {"Content-Type": media}
    )
    assert status == 201, (status, body)


def attach(host: str, repo: str, digest: str, bundle: bytes, *, cosign_30: bool = False) -> str:
    """Store bundle as cosign 3.1 does on a registry without the referrers API.

    cosign_30: list it the way cosign 3.0.x did (index entry artifactType = the empty
    config's type). Returns the referrer manifest's digest."""
    status, headers, _ = _request(
        f"http://{host}/v2/{repo}/manifests/{digest}",
        "HEAD",
        headers={"Accept": OCI_MANIFEST},
    )
    assert status == 200, status
    subject = {
        "mediaType": headers["Content-Type"],
        "size": int(headers["Content-Length"]),
        "digest": headers["Docker-Content-Digest"],
    }
    config = _blob(host, repo, b"{}")
    layer = _blob(host, repo, bundle)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": EMPTY, "size": 2, "digest": config, "artifactType": BUNDLE_V03},
            "layers": [{"mediaType": BUNDLE_V03, "size": len(bundle), "digest": layer}],
            "annotations": {
                "dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1",
                "org.opencontainers.image.created": "2026-12-01T19:51:37Z",
            },
            "subject": subject,
            "artifactType": BUNDLE_V03,
        },
        separators=(",", ":"),
    ).encode()
    mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    _manifest(host, repo, mdigest, manifest, OCI_MANIFEST)
    # The referrers API is absent (distribution 2.8): the tag schema's index.
    status, _, _ = _request(f"http://{host}/v2/{repo}/referrers/{digest}")
    assert status == 404, status
    tag = digest.replace(":", "-")
    status, _, old = _request(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX}
    )
    entries = json.loads(old)["manifests"] if status == 200 else []
    entries.append(
        {
            "mediaType": OCI_MANIFEST,
            "size": len(manifest),
            "digest": mdigest,
            "artifactType": EMPTY if cosign_30 else BUNDLE_V03,
        }
    )
    entries.sort(key=lambda e: e["digest"])
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, separators=(",", ":")
    ).encode()
    _manifest(host, repo, tag, index, OCI_INDEX)
    return mdigest


def referrers(host: str, repo: str, digest: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tag schema's index for digest and the referrer manifests it lists."""
    tag = digest.replace(":", "-")
    status, _, raw = _request(
        f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_INDEX}
    )
    assert status == 200, status
    index = json.loads(raw)
    manifests = []
    for e in index["manifests"]:
        _, _, m = _request(
            f"http://{host}/v2/{repo}/manifests/{e['digest']}", headers={"Accept": OCI_MANIFEST}
        )
        manifests.append(json.loads(m))
    return index, manifests


def blob(host: str, repo: str, digest: str) -> bytes:
    status, _, data = _request(f"http://{host}/v2/{repo}/blobs/{digest}")
    assert status == 200, status
    return data
