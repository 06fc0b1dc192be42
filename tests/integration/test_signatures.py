"""cos sign / generate-key-pair / verification against a real registry and OCI layouts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from cos.oci import cosign, signatures
from cos.oci.reference import parse_ref
from tests.support.cli import cos, push, refused, tiny_layout

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def keys(tmp_path: Path, cache_env: Path) -> tuple[Path, Path]:
    r = cos(
        "generate-key-pair",
        "--output-key-prefix",
        str(tmp_path / "cosign"),
        env={"COSIGN_PASSWORD": "correct horse"},
    )
    assert "correct horse" not in r.stderr + r.stdout
    key, pub = tmp_path / "cosign.key", tmp_path / "cosign.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "ENCRYPTED SIGSTORE PRIVATE KEY" in key.read_text()
    # Never overwritten.
    again = cos("generate-key-pair", "--output-key-prefix", str(tmp_path / "cosign"), check=False)
    refused(again, 2, "already exists")
    return key, pub


def test_sign_then_pull_verifies(
    tmp_path: Path, keys: tuple[Path, Path], local_registry: str
) -> None:
    key, pub = keys
    layout = tmp_path / "oci"
    tiny_layout(layout, "a", {"hello": "signed\n"})
    ref = f"{local_registry}/sig/a:1"
    digest = push(layout, "a", ref)

    r = cos(
        "sign",
        "--key",
        str(key),
        "--tls-verify=false",
        ref,
        "-a",
        "build=7",
        env={"COSIGN_PASSWORD": "correct horse"},
    )
    assert "correct horse" not in r.stderr + r.stdout
    # The stored shape is cosign's: an OCI manifest at sha256-<hex>.sig, one simple-signing
    # layer carrying the base64 signature annotation.
    sig_ref = f"docker://{local_registry}/sig/a:{cosign.sig_tag(digest)}"
    manifest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", sig_ref],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == cosign.PAYLOAD_TYPE
    assert base64.b64decode(layer["annotations"][cosign.SIGNATURE_ANNOTATION])

    dest = tmp_path / "tree"
    cos("pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(dest))
    assert (dest / "hello").read_text() == "signed\n"
    info = json.loads(
        cos("inspect", "--json", "--cosign-key", str(pub), "--tls-verify=false", ref).stdout
    )
    assert info["digest"] == digest

    # A second signer appends; both verify.
    other = tmp_path / "other"
    cos("generate-key-pair", "--output-key-prefix", str(other), env={"COSIGN_PASSWORD": ""})
    cos("sign", "--key", f"{other}.key", "--tls-verify=false", ref, env={"COSIGN_PASSWORD": ""})
    for p in (pub, Path(f"{other}.pub")):
        cos("inspect", "--cosign-key", str(p), "--tls-verify=false", ref)


def test_key_written_by_cosign_signs(tmp_path: Path, local_registry: str, cache_env: Path) -> None:
    layout = tmp_path / "oci"
    tiny_layout(layout, "b", {"f": "x"})
    ref = f"{local_registry}/sig/b:1"
    push(layout, "b", ref)
    key_file = DATA / "cosign-empty-password.key"
    pub = tmp_path / "pub.pem"
    pub.write_bytes(cosign.public_pem(cosign.load_private_key(key_file, b"")))
    cos("sign", "--key", str(key_file), "--tls-verify=false", ref, env={"COSIGN_PASSWORD": ""})
    cos("inspect", "--cosign-key", str(pub), "--tls-verify=false", ref)
    bad = cos(
        "sign",
        "--key",
        str(key_file),
        "--tls-verify=false",
        ref,
        env={"COSIGN_PASSWORD": "x"},
        check=False,
    )
    refused(bad, 4, "wrong password")


def _store_sig_manifest(
    local_registry: str, repo: str, digest: str, layers: list[tuple[bytes, str]]
) -> None:
    """Write a `.sig` manifest holding exactly layers (to plant tampered or foreign ones)."""
    signatures.store_signatures(
        parse_ref(f"{local_registry}/{repo}:x"), digest, layers, tls_verify=False
    )


@pytest.mark.parametrize("case", ["unsigned", "tampered", "wrong-key", "other-image"])
def test_bad_signatures_are_refused_before_writing(
    case: str, tmp_path: Path, local_registry: str, cache_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    layout = tmp_path / "oci"
    tiny_layout(layout, "c", {"f": case})
    repo = f"sig/{case}"
    ref = f"{local_registry}/{repo}:1"
    digest = push(layout, "c", ref)
    signer = cosign.generate_key()
    trusted = signer if case != "wrong-key" else cosign.generate_key()
    pub = tmp_path / "trusted.pub"
    pub.write_bytes(cosign.public_pem(trusted))
    signed_digest = digest if case != "other-image" else "sha256:" + "e" * 64
    data = cosign.payload(f"{local_registry}/{repo}", signed_digest)
    sig = base64.b64encode(cosign.sign(signer, data)).decode()
    if case == "tampered":
        data = data.replace(b"critical", b"Critical")  # same meaning for Go, other bytes
    if case != "unsigned":
        _store_sig_manifest(local_registry, repo, digest, [(data, sig)])

    dest = tmp_path / "tree"
    r = cos(
        "pull-image", "--cosign-key", str(pub), "--tls-verify=false", ref, str(dest), check=False
    )
    words = {
        "unsigned": "not signed",
        "tampered": "no signature verifies",
        "wrong-key": "no signature verifies",
        "other-image": "not this image",
    }[case]
    refused(r, 4, words)
    assert not dest.exists() and not (tmp_path / ".tree.partial").exists()
    # Nothing of the image reached the (private) cache either.
    cache = Path(os.environ["COS_CACHE_DIR"])
    assert not [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else True
    # Without a key the same image pulls: the refusal came from the signature check.
    cos("pull-image", "--tls-verify=false", ref, str(dest))
    assert (dest / "f").read_text() == case


def test_oci_layout_signatures(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    layout = tmp_path / "oci"
    tiny_layout(layout, "d", {"f": "layout"})
    tiny_layout(layout, "e", {"f": "unsigned"})
    cos("sign", "--key", str(key), f"oci:{layout}:d", env={"COSIGN_PASSWORD": "correct horse"})
    cos("pull-image", "--cosign-key", str(pub), f"oci:{layout}:d", str(tmp_path / "t1"))
    assert (tmp_path / "t1/f").read_text() == "layout"
    r = cos(
        "pull-image", "--cosign-key", str(pub), f"oci:{layout}:e", str(tmp_path / "t2"), check=False
    )
    refused(r, 4, "not signed")
    assert not (tmp_path / "t2").exists()


def test_verify_config_needs_a_key(tmp_path: Path, cache_env: Path) -> None:
    (cache_env / "config.yaml").write_text("verify: true\n")
    r = cos("inspect", "oci:/nowhere", check=False)
    refused(r, 3, "no cosign-key")
    (cache_env / "config.yaml").write_text(f"verify: true\ncosign-key: {tmp_path}/missing.pub\n")
    layout = tmp_path / "oci"
    tiny_layout(layout, "f", {"f": "x"})
    r = cos("inspect", f"oci:{layout}:f", check=False)
    refused(r, 4, "cannot read the public key")
