"""cosign v3 signatures: Sigstore bundles found through the referrers tag schema.

The bundles are made by tests/support/sigstore.py, written from the specs and not
sharing code with cos; the registry is distribution 2.8, which has no referrers API,
so every lookup goes through the `sha256-<hex>` index tag.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cos.oci import cosign
from tests.support import sigstore
from tests.support.cli import cos, push, refused, tiny_layout

pytestmark = pytest.mark.integration


@pytest.fixture
def private_cache(tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _image(tmp_path: Path, host: str, repo: str, text: str) -> str:
    layout = tmp_path / "oci"
    tiny_layout(layout, "i", {"f": text})
    return push(layout, "i", f"{host}/{repo}:1")


def _pub(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(cosign.public_pem(key))
    return pub


@pytest.mark.parametrize(
    "shape", ["cosign-3.1", "cosign-3.0", "spaced", "message-signature", "with-tlog"]
)
def test_cosign_v3_bundle_verifies(
    shape: str, tmp_path: Path, local_registry: str, private_cache: Path
) -> None:
    repo = f"bundle/{shape}"
    digest = _image(tmp_path, local_registry, repo, shape)
    key = cosign.generate_key()
    writer = sigstore.Writer(
        key,
        spaced=shape == "spaced",
        old_statement=shape == "cosign-3.0",
        message_signature=shape == "message-signature",
        tlog=shape == "with-tlog",
    )
    sigstore.attach(
        local_registry, repo, digest, writer.bundle(digest), cosign_30=shape == "cosign-3.0"
    )
    pub = _pub(tmp_path, key)
    ref = f"{local_registry}/{repo}:1"
    dest = tmp_path / "tree"
    r = cos("pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(dest))
    assert (dest / "f").read_text() == shape
    # The log plays no part without a log key, and the user is told so.
    assert "not checked" in r.stderr, r.stderr
    if shape == "with-tlog":
        assert "transparency-log entry that is not checked" in r.stderr


@pytest.mark.parametrize("case", ["tampered", "wrong-key", "other-image", "attestation"])
def test_bad_bundles_are_refused_before_writing(
    case: str, tmp_path: Path, local_registry: str, private_cache: Path
) -> None:
    repo = f"bundle/bad-{case}"
    digest = _image(tmp_path, local_registry, repo, case)
    signer = cosign.generate_key()
    trusted = signer if case != "wrong-key" else cosign.generate_key()
    writer = sigstore.Writer(
        signer,
        tamper=case == "tampered",
        predicate_type="https://slsa.dev/provenance/v1"
        if case == "attestation"
        else "https://sigstore.dev/cosign/sign/v1",
    )
    signed = digest if case != "other-image" else "sha256:" + "e" * 64
    sigstore.attach(local_registry, repo, digest, writer.bundle(signed))
    pub = _pub(tmp_path, trusted)
    ref = f"{local_registry}/{repo}:1"
    dest = tmp_path / "tree"
    r = cos(
        "pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(dest), check=False
    )
    words = {
        "tampered": "no signature verifies",
        "wrong-key": "no signature verifies",
        "other-image": "not this image",
        "attestation": "not a signature",
    }[case]
    refused(r, 4, words)
    assert not dest.exists() and not (tmp_path / ".tree.partial").exists()
    cache = Path(os.environ["COS_CACHE_DIR"])
    assert not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True
    # Without a key the same image pulls: the refusal came from the signature check.
    cos("pull-image", "--tls-verify=false", ref, str(dest))
    assert (dest / "f").read_text() == case


def test_cos_sign_new_format_writes_what_cosign_reads(
    tmp_path: Path, local_registry: str, private_cache: Path
) -> None:
    repo = "bundle/cos-sign"
    digest = _image(tmp_path, local_registry, repo, "cos sign")
    key = cosign.generate_key()
    key_file = tmp_path / "cosign.key"
    key_file.write_bytes(cosign.encrypt_private_key(key, b"", n=32768))
    pub = _pub(tmp_path, key)
    ref = f"{local_registry}/{repo}:1"
    # Another signature already listed: cos appends, keeping it.
    other = sigstore.attach(
        local_registry, repo, digest, sigstore.Writer(cosign.generate_key()).bundle(digest)
    )
    cos(
        "sign",
        "--key",
        str(key_file),
        "--bundle-format",
        "new",
        "--tls-verify=false",
        ref,
        env={"COSIGN_PASSWORD": ""},
    )
    index, manifests = sigstore.referrers(local_registry, repo, digest)
    assert index["mediaType"] == sigstore.OCI_INDEX
    assert [e["digest"] for e in index["manifests"]] == sorted(
        e["digest"] for e in index["manifests"]
    )
    assert len(manifests) == 2 and other in [e["digest"] for e in index["manifests"]]
    ours = next(
        m for e, m in zip(index["manifests"], manifests, strict=True) if e["digest"] != other
    )
    assert ours["subject"]["digest"] == digest
    assert ours["artifactType"] == ours["config"]["artifactType"] == sigstore.BUNDLE_V03
    assert ours["config"]["mediaType"] == sigstore.EMPTY
    (layer,) = ours["layers"]
    assert layer["mediaType"] == sigstore.BUNDLE_V03
    blob = sigstore.blob(local_registry, repo, layer["digest"])
    assert sigstore.dsse_verifies(blob, key.public_key(), digest)
    # No `.sig` tag was written: the pull below verifies through the bundle alone.
    tags = json.loads(sigstore._request(f"http://{local_registry}/v2/{repo}/tags/list")[2])
    assert not [t for t in tags["tags"] if t.endswith(".sig")]
    cos("pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(tmp_path / "t"))
    assert (tmp_path / "t/f").read_text() == "cos sign"


def test_oci_layout_bundle(tmp_path: Path, private_cache: Path) -> None:
    key = cosign.generate_key()
    key_file = tmp_path / "cosign.key"
    key_file.write_bytes(cosign.encrypt_private_key(key, b"", n=32768))
    pub = _pub(tmp_path, key)
    layout = tmp_path / "oci"
    tiny_layout(layout, "d", {"f": "layout"})
    tiny_layout(layout, "e", {"f": "unsigned"})
    cos(
        "sign",
        "--key",
        str(key_file),
        "--bundle-format=new",
        f"oci:{layout}:d",
        env={"COSIGN_PASSWORD": ""},
    )
    cos("pull-image", "--cosign-key", str(pub), f"oci:{layout}:d", str(tmp_path / "t1"))
    assert (tmp_path / "t1/f").read_text() == "layout"
    r = cos(
        "pull-image", "--cosign-key", str(pub), f"oci:{layout}:e", str(tmp_path / "t2"), check=False
    )
    refused(r, 4, "not signed")


@pytest.mark.parametrize("case", ["logged", "unlogged", "other-log", "sig-format"])
def test_with_a_log_key_only_a_logged_signature_counts(
    case: str, tmp_path: Path, local_registry: str, private_cache: Path
) -> None:
    """tlog-key: the bundle's transparency-log entry must prove, offline, that this log
    holds the signature; a key-only signature (no entry, another log's entry, the
    `.sig` format) is refused before anything is written."""
    repo = f"bundle/tlog-{case}"
    digest = _image(tmp_path, local_registry, repo, case)
    key, log_key = cosign.generate_key(), cosign.generate_key()
    ref = f"{local_registry}/{repo}:1"
    if case == "sig-format":
        key_file = tmp_path / "cosign.key"
        key_file.write_bytes(cosign.encrypt_private_key(key, b"", n=32768))
        cos("sign", "--key", str(key_file), "--tls-verify=false", ref, env={"COSIGN_PASSWORD": ""})
    else:
        log = {"logged": sigstore.Log(log_key), "other-log": sigstore.Log(cosign.generate_key())}
        writer = sigstore.Writer(key, log=log.get(case))
        sigstore.attach(local_registry, repo, digest, writer.bundle(digest))
    log_pub = tmp_path / "rekor.pub"
    log_pub.write_bytes(cosign.public_pem(log_key))
    env = {"COS_TLOG_KEY": str(log_pub)}
    pub, dest = _pub(tmp_path, key), tmp_path / "tree"
    argv = ["pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(dest)]
    r = cos(*argv, env=env, check=False)
    if case == "logged":
        assert r.returncode == 0, r.stderr
        assert "transparency-log entry checks out" in r.stderr and "not checked" not in r.stderr
        assert (dest / "f").read_text() == case
        return
    words = {
        "unlogged": "no transparency-log entry",
        "other-log": "from another log",
        "sig-format": "no signature bundle",
    }[case]
    refused(r, 4, words)
    assert not dest.exists()
    # The key alone accepts it: the refusal came from the log check.
    cos(*argv)
    assert (dest / "f").read_text() == case
