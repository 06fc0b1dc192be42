"""Transparency-log entries in signature bundles, checked offline against the log's key.

Bundles and log entries come from the independent writer in tests/support/sigstore.py
(Merkle tree and audit paths by RFC 6962's recursive definitions, checkpoints signed as
notes); cos.oci.tlog chains the proof iteratively (RFC 9162) and shares no code with it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cos.oci import bundle, cosign, tlog
from tests.support import sigstore

Key = ec.EllipticCurvePrivateKey
Keys = tuple[Key, Key]
DIGEST = "sha256:" + hashlib.sha256(b"manifest").hexdigest()


@pytest.fixture(scope="module")
def keys() -> Keys:
    """(the signer's key, the log's key)"""
    return cosign.generate_key(), cosign.generate_key()


def _log_key(key: ec.EllipticCurvePrivateKey) -> tlog.LogKey:
    return tlog.LogKey(key.public_key(), tlog.key_id(key.public_key()))


def _verify(
    blob: bytes, signer: ec.EllipticCurvePrivateKey, log: ec.EllipticCurvePrivateKey
) -> str | None:
    reason, _ = bundle.verify(signer.public_key(), {DIGEST}, [blob], _log_key(log))
    return reason


@pytest.mark.parametrize("message", [False, True], ids=["dsse", "message-signature"])
@pytest.mark.parametrize(("before", "after"), [(0, 0), (5, 6), (7, 0), (8, 8), (1000, 23)])
def test_an_entry_of_the_log_proves_it_holds_the_signature(
    keys: Keys, message: bool, before: int, after: int
) -> None:
    signer, log_key = keys
    log = sigstore.Log(log_key, before=before, after=after)
    blob = sigstore.Writer(signer, log=log, message_signature=message).bundle(DIGEST)
    assert _verify(blob, signer, log_key) is None
    # Without a log key, the same bundle verifies on the key alone.
    assert bundle.verify(signer.public_key(), {DIGEST}, [blob])[0] is None


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        ("proof", "does not lead to the root hash"),
        ("root", "does not lead to the root hash"),
        ("body", "does not lead to the root hash"),
        ("checkpoint-sig", "not signed by the configured log key"),
        ("checkpoint-size", "names another tree"),
        ("log-id", "from another log"),
        ("other", "recorded another"),
    ],
)
@pytest.mark.parametrize("message", [False, True], ids=["dsse", "message-signature"])
def test_an_entry_that_does_not_check_out_is_refused(
    keys: Keys, tamper: str, why: str, message: bool
) -> None:
    signer, log_key = keys
    log = sigstore.Log(log_key, tamper=tamper)
    blob = sigstore.Writer(signer, log=log, message_signature=message).bundle(DIGEST)
    reason = _verify(blob, signer, log_key)
    assert reason is not None and why in reason, reason


def test_a_bundle_without_an_entry_or_from_another_log_is_refused(
    keys: Keys,
) -> None:
    signer, log_key = keys
    plain = sigstore.Writer(signer).bundle(DIGEST)
    assert "no transparency-log entry" in str(_verify(plain, signer, log_key))
    made_up = sigstore.Writer(signer, tlog=True).bundle(DIGEST)
    assert _verify(made_up, signer, log_key) is not None
    other_log = cosign.generate_key()
    signed_elsewhere = sigstore.Writer(signer, log=sigstore.Log(other_log)).bundle(DIGEST)
    assert "another log" in str(_verify(signed_elsewhere, signer, log_key))
    # The entry of a signature by another key: the signer's key is what counts first.
    intruder = cosign.generate_key()
    theirs = sigstore.Writer(intruder, log=sigstore.Log(log_key)).bundle(DIGEST)
    assert "no signature verifies" in str(_verify(theirs, signer, log_key))


def test_audit_paths_of_every_leaf_of_small_trees() -> None:
    """The iterative check accepts every (leaf, size) the recursive writer makes and
    refuses it for a neighbouring index and for a path one hash too long."""
    for size in range(1, 40):
        leaves = [b"leaf %d" % i for i in range(size)]
        root = sigstore._mth(leaves)
        for m in range(size):
            path = sigstore._audit_path(m, leaves)
            leaf = tlog.leaf_hash(leaves[m])
            assert tlog.root_from_proof(leaf, m, size, path) == root, (m, size)
            for wrong in ((m + 1) % size, m - 1):
                if 0 <= wrong < size and wrong != m:
                    assert tlog.root_from_proof(leaf, wrong, size, path) != root
            # (A size the path also fits gives the same root: the signed checkpoint is
            # what binds the size, see test_an_entry_that_does_not_check_out_is_refused.)
            assert tlog.root_from_proof(leaf, m, size, [*path, root]) is None


def test_a_log_key_must_be_an_ecdsa_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "log.pub").write_bytes(pem)
    with pytest.raises(ValueError, match="ECDSA"):
        tlog.LogKey.load(tmp_path / "log.pub")
