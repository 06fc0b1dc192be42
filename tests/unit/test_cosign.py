"""cosign formats: keys, payloads and signature checks, against artifacts cosign wrote."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from cos.errors import ExitCode, ImageError
from cos.oci import bundle, cosign
from tests.support import sigstore

DATA = Path(__file__).resolve().parents[1] / "data"

# A signature captured from `cosign sign --key` (public key, payload blob, annotation).
GENUINE_PUB = b"""-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEA9oFvTJJuu0cszKBsiuqfFYN3NLV
meleaASYW5l+nqDxoUg4f8177owlgVD89pZQ9jUxP8dbibmDJpvcjBo9RQ==
-----END PUBLIC KEY-----
"""
GENUINE_REPO = "localhost:15381/tobby/fixture"
GENUINE_DIGEST = "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268"
GENUINE_PAYLOAD = (
    b'{"critical":{"identity":{"docker-reference":"localhost:15381/tobby/fixture"},'
    b'"image":{"docker-manifest-digest":"sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0'
    b'cbcaa0d2c8bda4967268"},"type":"cosign container image signature"},"optional":null}'
)
GENUINE_SIG = (
    "MEUCIEB+pz4s+9yxG+Om/bukeAfwloKFEISUhxLvIYlP02P8AiEAz1oN"
    "kilC+cprxcrEHqN0vxM+zvP34ikHFzi8e7Sevls="
)


def _sig(payload: bytes, sig_b64: str) -> cosign.Signature:
    return cosign.Signature(
        payload, sig_b64, "sha256:" + hashlib.sha256(payload).hexdigest(), len(payload)
    )


@pytest.fixture
def genuine_pub(tmp_path: Path) -> cosign.PublicKey:
    p = tmp_path / "cosign.pub"
    p.write_bytes(GENUINE_PUB)
    return cosign.load_public_key(p)


def test_payload_is_byte_identical_to_cosign() -> None:
    assert cosign.payload(GENUINE_REPO, GENUINE_DIGEST) == GENUINE_PAYLOAD
    assert hashlib.sha256(GENUINE_PAYLOAD).hexdigest().startswith("3a29d26a")


def test_genuine_cosign_signature_verifies(genuine_pub: cosign.PublicKey) -> None:
    assert (
        cosign.verify(genuine_pub, {GENUINE_DIGEST}, [_sig(GENUINE_PAYLOAD, GENUINE_SIG)]) is None
    )


def test_genuine_signature_for_another_digest_is_refused(genuine_pub: cosign.PublicKey) -> None:
    other = "sha256:" + "0" * 64
    reason = cosign.verify(genuine_pub, {other}, [_sig(GENUINE_PAYLOAD, GENUINE_SIG)])
    assert reason is not None and "not this image" in reason


def test_tampered_payload_is_refused(genuine_pub: cosign.PublicKey) -> None:
    tampered = GENUINE_PAYLOAD.replace(b"tobby", b"tabby")
    reason = cosign.verify(genuine_pub, {GENUINE_DIGEST}, [_sig(tampered, GENUINE_SIG)])
    assert reason == "no signature verifies with the given key"


def test_payload_not_matching_its_descriptor_is_refused(genuine_pub: cosign.PublicKey) -> None:
    s = cosign.Signature(GENUINE_PAYLOAD, GENUINE_SIG, "sha256:" + "1" * 64, len(GENUINE_PAYLOAD))
    assert "does not match its digest" in (cosign.verify(genuine_pub, {GENUINE_DIGEST}, [s]) or "")


def test_wrong_key_and_no_signature_are_refused(tmp_path: Path) -> None:
    other = cosign.generate_key().public_key()
    assert cosign.verify(other, {GENUINE_DIGEST}, [_sig(GENUINE_PAYLOAD, GENUINE_SIG)]) == (
        "no signature verifies with the given key"
    )
    assert cosign.verify(other, {GENUINE_DIGEST}, []) == "the image is not signed"
    assert cosign.verify(other, {GENUINE_DIGEST}, [_sig(GENUINE_PAYLOAD, "!!notbase64")]) == (
        "a signature is not valid base64"
    )


def test_one_good_signature_among_bad_ones_is_enough(genuine_pub: cosign.PublicKey) -> None:
    bad = _sig(GENUINE_PAYLOAD, base64.b64encode(b"junk").decode())
    assert (
        cosign.verify(genuine_pub, {GENUINE_DIGEST}, [bad, _sig(GENUINE_PAYLOAD, GENUINE_SIG)])
        is None
    )


def test_key_written_by_cosign_decrypts() -> None:
    key = cosign.load_private_key(DATA / "cosign-empty-password.key", b"")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    with pytest.raises(cosign.KeyFileError, match="wrong password"):
        cosign.load_private_key(DATA / "cosign-empty-password.key", b"guess")


@pytest.mark.parametrize("n", [32768, 65536])
def test_written_key_round_trips_and_signs(tmp_path: Path, n: int) -> None:
    key = cosign.generate_key()
    path = tmp_path / "cosign.key"
    path.write_bytes(cosign.encrypt_private_key(key, b"s3cret", n=n))
    assert "ENCRYPTED SIGSTORE PRIVATE KEY" in path.read_text()
    body = json.loads(base64.b64decode("".join(path.read_text().splitlines()[1:-1])))
    assert body["kdf"]["params"] == {"N": n, "r": 8, "p": 1}
    assert body["cipher"]["name"] == "nacl/secretbox"
    loaded = cosign.load_private_key(path, b"s3cret")
    data = cosign.payload("h:5000/r", "sha256:" + "a" * 64)
    sig = base64.b64encode(cosign.sign(loaded, data)).decode()
    assert cosign.verify(key.public_key(), {"sha256:" + "a" * 64}, [_sig(data, sig)]) is None


@pytest.mark.parametrize(
    "text",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nbm90IGEga2V5\n"
        "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
    ],
)
def test_bad_private_key_files_are_one_line_errors(tmp_path: Path, text: str) -> None:
    p = tmp_path / "k"
    p.write_text(text)
    with pytest.raises(cosign.KeyFileError) as exc:
        cosign.load_private_key(p, b"")
    assert "\n" not in exc.value.message and exc.value.exit_code == ExitCode.IMAGE


def test_unusual_scrypt_parameters_are_refused(tmp_path: Path) -> None:
    good = cosign.encrypt_private_key(cosign.generate_key(), b"", n=32768).decode()
    body = json.loads(base64.b64decode("".join(good.splitlines()[1:-1])))
    body["kdf"]["params"]["N"] = 2
    enc = base64.b64encode(json.dumps(body).encode()).decode()
    p = tmp_path / "k"
    p.write_text(
        f"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{enc}\n"
        "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    )
    with pytest.raises(cosign.KeyFileError, match="scrypt parameters"):
        cosign.load_private_key(p, b"")


def test_public_key_errors(tmp_path: Path) -> None:
    with pytest.raises(cosign.KeyFileError, match="cannot read"):
        cosign.load_public_key(tmp_path / "missing.pub")
    (tmp_path / "bad.pub").write_text("hello")
    with pytest.raises(cosign.KeyFileError, match="not a PEM public key"):
        cosign.load_public_key(tmp_path / "bad.pub")


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_rsa_and_ed25519_keys_verify(kind: str) -> None:
    key: cosign.PrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    digest = "sha256:" + "b" * 64
    data = cosign.payload("h/r", digest)
    sig = base64.b64encode(cosign.sign(key, data)).decode()
    assert cosign.verify(key.public_key(), {digest}, [_sig(data, sig)]) is None
    assert cosign.verify(key.public_key(), {digest}, [_sig(data + b" ", sig)]) is not None


def test_payload_parsing_follows_go_rules() -> None:
    d = "sha256:" + "c" * 64
    variant = json.dumps(
        {"Critical": {"Image": {"Docker-manifest-digest": d}, "type": cosign.SIGNATURE_TYPE}}
    ).encode()
    assert cosign.signed_digest(variant) == d
    dup = (
        b'{"critical":{"image":{"docker-manifest-digest":"%s","Docker-Manifest-Digest":"x"},'
        b'"type":"cosign container image signature"}}' % d.encode()
    )
    with pytest.raises(ValueError, match="duplicate"):
        cosign.signed_digest(dup)
    with pytest.raises(ValueError, match="payload type"):
        cosign.signed_digest(b'{"critical":{"image":{"docker-manifest-digest":"x"},"type":"x"}}')
    with pytest.raises(ValueError, match="too large"):
        cosign.signed_digest(b" " * (cosign.MAX_PAYLOAD + 1))


def test_sig_tag_validates_the_digest() -> None:
    assert cosign.sig_tag("sha256:" + "d" * 64) == "sha256-" + "d" * 64 + ".sig"
    for bad in ("sha256:../../etc", "sha512:" + "d" * 64, "sha256:" + "D" * 64):
        with pytest.raises(ImageError):
            cosign.sig_tag(bad)


# -- Sigstore bundles (cosign v3), made by the independent writer in tests/support -----

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "shape", ["cosign-3.1", "cosign-3.0", "spaced", "message-signature", "with-tlog"]
)
def test_bundle_shapes_cosign_writes_verify(shape: str) -> None:
    key = cosign.generate_key()
    w = sigstore.Writer(
        key,
        spaced=shape == "spaced",
        old_statement=shape == "cosign-3.0",
        message_signature=shape == "message-signature",
        tlog=shape == "with-tlog",
    )
    reason, b = bundle.verify(key.public_key(), {D}, [w.bundle(D)])
    assert reason is None and b is not None
    assert bool(b.tlog_entries) == (shape == "with-tlog")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tamper": True}, "no signature verifies"),
        ({"key": "other"}, "no signature verifies"),
        ({"digest": "sha256:" + "cd" * 32}, "not this image"),
        ({"predicate_type": "https://slsa.dev/provenance/v1"}, "not a signature"),
        ({"extra": {"mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2"}}, "0.2"),
        ({"extra": {"verificationMaterial": {"certificate": {"rawBytes": "AA=="}}}}, "keyless"),
        ({"extra": {"dsseEnvelope": None}}, "malformed"),
    ],
    ids=["tampered", "other-key", "other-image", "attestation", "v0.2", "keyless", "no-content"],
)
def test_bad_bundles_name_the_reason(change: dict[str, object], words: str) -> None:
    signer, trusted = cosign.generate_key(), cosign.generate_key()
    if change.pop("key", None) is None:
        trusted = signer
    signed = str(change.pop("digest", D))
    data = sigstore.Writer(signer, **change).bundle(signed)  # type: ignore[arg-type]
    reason, b = bundle.verify(trusted.public_key(), {D}, [data])
    assert b is None and reason is not None and words in reason, reason


def test_bundle_json_duplicates_and_size_are_refused() -> None:
    key = cosign.generate_key()
    good = sigstore.Writer(key).bundle(D)
    dup = good[:-1] + b',"mediaType":"x"}'
    assert "duplicate" in str(bundle.verify(key.public_key(), {D}, [dup])[0])
    big = good[:-1] + b',"x":"' + b"a" * bundle.MAX_BUNDLE + b'"}'
    assert "too large" in str(bundle.verify(key.public_key(), {D}, [big])[0])
    assert bundle.verify(key.public_key(), {D}, [])[0] == "the image is not signed"
    # One good bundle among bad ones is enough.
    assert bundle.verify(key.public_key(), {D}, [dup, good])[0] is None


def test_cos_bundles_read_back_independently() -> None:
    key = cosign.generate_key()
    data = bundle.make_bundle(key, D, {"build": "7"})
    assert sigstore.dsse_verifies(data, key.public_key(), D)
    doc = json.loads(data)
    assert list(doc) == ["mediaType", "verificationMaterial", "dsseEnvelope"]
    assert "keyid" not in doc["dsseEnvelope"]["signatures"][0]
    st = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    assert list(st) == ["_type", "subject", "predicateType", "predicate"]
    assert st["subject"][0]["annotations"] == {"build": "7"}
    assert bundle.statement(D) == sigstore.Writer(key).statement(D)
    manifest = json.loads(bundle.referrer_manifest(data, {"digest": D}, "2026-12-01T00:00:00Z"))
    assert list(manifest)[-2:] == ["subject", "artifactType"]
    assert manifest["config"]["digest"] == "sha256:" + hashlib.sha256(b"{}").hexdigest()
