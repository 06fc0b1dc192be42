"""Transparency-log entries of a signature bundle, checked offline against a log's key.

A bundle signed with the log in use carries, per entry, the log's canonicalized body of
the signature (`canonicalizedBody`), the entry's place in the log's Merkle tree with
the hashes from its leaf to the root (`inclusionProof`), and a checkpoint: the tree's
size and root hash in a note the log signed. Checked here, without asking the log:

1. the entry is of the configured log (its `logId` is the SHA-256 of the key);
2. the body's leaf hash, chained with the proof's hashes (RFC 9162, 2.1.3.2), gives
   the proof's root hash, and the checkpoint names the same root and size;
3. the checkpoint's signature verifies with the log's key;
4. the body records this signature: for a DSSE envelope (kind `dsse` 0.0.1) the
   payload's SHA-256 and the signature with the signer's key; for a message signature
   (`hashedrekord` 0.0.1) the signed digest, the signature and the key.

What this proves: the log published this very signature, in a tree whose head it
signed. What it does not: that the log is honest to everyone (no consistency check
with other heads is made); that is what monitors of a public log are for.

Pure: no network, no files except the key reader.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cos.oci.cosign import PublicKey, load_public_key
from cos.oci.jsondoc import load_json

MAX_PROOF_HASHES = 64  # a tree of 2**64 leaves needs no more
_NOTE_SIGNATURE = "\u2014 "  # a note's signature lines start with an em dash


@dataclass(frozen=True)
class LogKey:
    """A transparency log's public key and the id entries name it by."""

    key: ec.EllipticCurvePublicKey
    key_id: bytes  # SHA-256 of the key's DER SubjectPublicKeyInfo

    @classmethod
    def load(cls, path: Path) -> LogKey:
        key = load_public_key(path)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"{path}: a transparency log key is an ECDSA key")
        return cls(key, key_id(key))


def key_id(key: PublicKey) -> bytes:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


@dataclass(frozen=True)
class Signed:
    """What a bundle's verified signature is, for matching the log's record of it."""

    key: PublicKey
    signature: bytes
    payload: bytes | None = None  # DSSE: the envelope's payload
    digest: bytes | None = None  # message signature: the SHA-256 that was signed


class EntryError(ValueError):
    """Why one log entry does not vouch for the signature."""


def verify(entries: Sequence[Mapping[str, Any]], log: LogKey, signed: Signed) -> str | None:
    """None when one of entries proves the log holds signed; else why none does."""
    if not entries:
        return "the signature bundle has no transparency-log entry"
    reason = ""
    for entry in entries:
        try:
            verify_entry(entry, log, signed)
        except EntryError as exc:
            reason = str(exc)
            continue
        return None
    return f"its transparency-log entry does not check out: {reason}"


def verify_entry(entry: Mapping[str, Any], log: LogKey, signed: Signed) -> None:
    if _bytes(_obj(entry, "logId"), "keyId") != log.key_id:
        raise EntryError("it is from another log than the configured one")
    body = _bytes(entry, "canonicalizedBody")
    proof = _obj(entry, "inclusionProof")
    index, size = _int(proof, "logIndex"), _int(proof, "treeSize")
    if not 0 <= index < size:
        raise EntryError(f"leaf {index} is outside a tree of {size}")
    path = proof.get("hashes")
    if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES:
        raise EntryError("its inclusion proof has no list of hashes")
    nodes = [_b64(h, "a proof hash") for h in path]
    root = _bytes(proof, "rootHash")
    if len(root) != 32 or any(len(n) != 32 for n in nodes):
        raise EntryError("its inclusion proof holds hashes that are not SHA-256")
    if root_from_proof(leaf_hash(body), index, size, nodes) != root:
        raise EntryError("its inclusion proof does not lead to the root hash")
    envelope = _obj(proof, "checkpoint").get("envelope")
    if not isinstance(envelope, str):
        raise EntryError("no checkpoint")
    if checkpoint_head(envelope, log) != (size, root):
        raise EntryError("the checkpoint names another tree than the inclusion proof")
    _check_body(body, _obj(entry, "kindVersion"), signed)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_proof(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root an audit path leads to from leaf index of a tree of size (RFC 9162,
    2.1.3.2); None when the path cannot belong to such a tree (too long or short)."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def checkpoint_head(envelope: str, log: LogKey) -> tuple[int, bytes]:
    """(tree size, root hash) of a checkpoint note signed by the log's key."""
    text, sep, signatures = envelope.partition("\n\n")
    if not sep or not signatures.endswith("\n"):
        raise EntryError("the checkpoint is not a signed note")
    note = (text + "\n").encode()
    lines = text.split("\n")
    if len(lines) < 3 or not lines[0] or not lines[1].isdigit() or len(lines[1]) > 20:
        raise EntryError("the checkpoint has no origin, size and root hash")
    size, root = int(lines[1]), _b64(lines[2], "the checkpoint's root hash")
    for line in signatures[:-1].split("\n"):
        if not line.startswith(_NOTE_SIGNATURE):
            raise EntryError("the checkpoint has a malformed signature line")
        _, _, sig64 = line[len(_NOTE_SIGNATURE) :].rpartition(" ")
        sig = _b64(sig64, "a checkpoint signature")
        if len(sig) > 4 and sig[:4] == log.key_id[:4]:
            try:
                log.key.verify(sig[4:], note, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return size, root
    raise EntryError("the checkpoint is not signed by the configured log key")


def _check_body(body: bytes, kind_version: Mapping[str, Any], signed: Signed) -> None:
    """The log's record is of this very signature, by this key, over this content."""
    kind = (kind_version.get("kind"), kind_version.get("version"))
    try:
        doc = load_json(body)
    except ValueError as exc:
        raise EntryError(f"its body is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or (doc.get("kind"), doc.get("apiVersion")) != kind:
        raise EntryError("its body is not of the kind the entry names")
    spec = _obj(doc, "spec")
    if kind == ("dsse", "0.0.1") and signed.payload is not None:
        expected = hashlib.sha256(signed.payload).hexdigest()
        got = _obj(spec, "payloadHash")
        if (got.get("algorithm"), got.get("value")) != ("sha256", expected):
            raise EntryError("the log recorded another payload")
        sigs = spec.get("signatures")
        if not isinstance(sigs, list) or not any(
            isinstance(s, dict)
            and _b64(s.get("signature"), "a recorded signature") == signed.signature
            and _same_key(_b64(s.get("verifier"), "a recorded key"), signed.key)
            for s in sigs
        ):
            raise EntryError("the log recorded another signature or key")
        return
    if kind == ("hashedrekord", "0.0.1") and signed.digest is not None:
        digest = _obj(_obj(spec, "data"), "hash")
        if (digest.get("algorithm"), digest.get("value")) != ("sha256", signed.digest.hex()):
            raise EntryError("the log recorded another digest")
        sig = _obj(spec, "signature")
        pem = _b64(_obj(sig, "publicKey").get("content"), "the recorded key")
        if _b64(sig.get("content"), "the recorded signature") != signed.signature or not (
            _same_key(pem, signed.key)
        ):
            raise EntryError("the log recorded another signature or key")
        return
    raise EntryError(f"an entry of kind {kind[0]} {kind[1]} does not record this signature")


def _same_key(pem: bytes, key: PublicKey) -> bool:
    try:
        other = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        return False
    return key_id(other) == key_id(key)  # type: ignore[arg-type]


def _obj(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise EntryError(f"no {name!r}")
    return value


def _int(doc: Mapping[str, Any], name: str) -> int:
    """protojson writes int64 as a decimal string (and reads numbers too)."""
    value = doc.get(name)
    if isinstance(value, str) and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise EntryError(f"no {name!r}")


def _bytes(doc: Mapping[str, Any], name: str) -> bytes:
    return _b64(doc.get(name), repr(name))


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EntryError(f"no {what}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EntryError(f"{what} is not base64") from exc
