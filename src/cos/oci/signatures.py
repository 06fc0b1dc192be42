"""Reading and writing cosign signatures next to an image.

Two places are read: the `.sig` tag (cosign before v3, and `cos sign` by default) and
Sigstore bundles stored as OCI referrers (cosign v3, `cos sign --bundle-format new`;
`cos.oci.referrers`). One valid signature by the key in either place is enough.

The `.sig` "image" is tiny (one payload blob per signature and a config). It is read
with the same client as the image (`cos.oci.remote`), so credentials, TLS settings and
registries.conf mirrors behave exactly as for a pull, and written with skopeo; an
`oci:` layout holds its signatures under the same tag name as a registry does.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.config import Trust
from cos.errors import ImageError, ToolError
from cos.fsutil import atomic_write
from cos.oci import bundle, cosign, referrers, tlog
from cos.oci.digest import blob_path, check_digest, sha256_digest
from cos.oci.jsondoc import load_json
from cos.oci.layout import REF_NAME, OciLayout
from cos.oci.reference import ImageRef, Transport
from cos.oci.registries import load as registries_conf
from cos.oci.registry import RegistryError
from cos.oci.remote import Repository
from cos.oci.transport import registry_env

log = logging.getLogger("cos")

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MAX_SIGNATURES = 64


class SignatureError(ImageError):
    """An image that config or --cosign-key says must be signed, and is not."""


def _sig_ref(ref: ImageRef, digest: str) -> ImageRef:
    return ImageRef(ref.transport, ref.name, cosign.sig_tag(digest))


def _tls(flag: str, tls_verify: bool) -> str:
    return f"--{flag}={'true' if tls_verify else 'false'}"


def _read_layout(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The signature manifest and its payload blobs from an OCI layout (None: no tag)."""
    oci = OciLayout(layout)
    digest = oci.resolve(tag)
    if digest is None:
        return None
    try:
        manifest = oci.read_json(digest, "signature manifest")
        payloads = {}
        for layer in _signature_layers(manifest):
            if layer.get("mediaType") == cosign.PAYLOAD_TYPE:
                d = str(layer.get("digest"))
                # cosign.verify checks each payload against its digest and names a mismatch.
                cap = cosign.MAX_PAYLOAD
                payloads[d] = oci.read_blob(d, "signature payload", cap, verify=False)
    except (OSError, ValueError, AttributeError) as exc:
        raise ImageError(f"unreadable signature manifest in {layout}: {exc}") from exc
    return manifest, payloads


def _copy(src: str, dest: str, tls_verify: bool, dest_side: bool) -> None:
    flag = "dest-tls-verify" if dest_side else "src-tls-verify"
    argv = ["skopeo", "copy", "--quiet", "--preserve-digests"]
    if src.startswith("docker://") or dest.startswith("docker://"):
        argv.append(_tls(flag, tls_verify))
    runner.run([*argv, src, dest], env=registry_env())


def _read_registry(
    ref: ImageRef, tag: str, tls_verify: bool, write: bool
) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The signature manifest and its payloads from a registry (None: no such tag)."""
    repo = Repository(ref, tls_verify, write=write)
    try:
        try:
            raw, _ = repo.manifest(tag)
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        manifest = load_json(raw)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        payloads = {}
        for layer in _signature_layers(manifest):
            if layer.get("mediaType") == cosign.PAYLOAD_TYPE:
                d = check_digest(layer.get("digest"), "signature payload")
                payloads[d] = repo.small_blob(d, cosign.MAX_PAYLOAD)
    except RegistryError as exc:
        raise ImageError(
            f"cannot read the signatures of {ref}: {exc.message}",
            hint=exc.hint or "check that the registry is reachable",
        ) from exc
    except (ValueError, AttributeError) as exc:
        raise ImageError(f"unreadable signature manifest of {ref}: {exc}") from exc
    return manifest, payloads


def fetch_signatures(
    ref: ImageRef, digest: str, tls_verify: bool = True, write: bool = False
) -> list[cosign.Signature]:
    """Every signature stored for digest in ref's repository ([] when unsigned).

    write: read where a new signature is about to be written (the registry itself,
    never a mirror's possibly older copy)."""
    sig = _sig_ref(ref, digest)
    if ref.transport == Transport.OCI:
        found = _read_layout(Path(ref.name), sig.tag or "")
    else:
        found = _read_registry(ref, sig.tag or "", tls_verify, write)
    if found is None:
        return []
    manifest, payloads = found
    out = []
    for layer in _signature_layers(manifest):
        d = str(layer.get("digest"))
        ann = layer.get("annotations")
        b64 = ann.get(cosign.SIGNATURE_ANNOTATION) if isinstance(ann, dict) else None
        size = layer.get("size")
        if not isinstance(size, int) or isinstance(size, bool):
            size = -1  # matches no payload: verify names the mismatch
        if d in payloads and isinstance(b64, str):
            out.append(cosign.Signature(payloads[d], b64, d, size))
    return out


def _signature_layers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The layer descriptors of a `.sig` manifest that are objects, at most MAX_SIGNATURES."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        return []
    return [x for x in layers if isinstance(x, dict)][:MAX_SIGNATURES]


def require_signed(ref: ImageRef, digests: set[str], trust: Trust, tls_verify: bool = True) -> None:
    """Refuse the image unless a signature by trust.key vouches for one of digests
    (with trust.log_key: a bundle whose log entry proves that log published it).

    Called after the manifest digest is known and before anything is written for the
    image: an unsigned, tampered or foreign-signed image never reaches a disk.
    """
    key_path = trust.key
    key = cosign.load_public_key(key_path)
    log_key = _log_key(trust.log_key)
    sigs: list[cosign.Signature] = []
    if log_key is None:  # a `.sig` signature carries no inclusion proof
        for d in sorted(digests):
            sigs += fetch_signatures(ref, d, tls_verify)
    reason = cosign.verify(key, digests, sigs)
    if reason is not None:
        blobs: list[bytes] = []
        for d in sorted(digests):
            blobs += referrers.fetch_bundles(ref, d, tls_verify)
        if not blobs and log_key is not None:
            reason = (
                "it has no signature bundle (with tlog-key set only a bundle whose log"
                " entry checks out counts; `.sig` signatures carry no inclusion proof)"
            )
        elif blobs:
            why, verified = bundle.verify(key, digests, blobs, log_key)
            if verified is not None:
                if log_key is None:
                    _tlog_unchecked(ref, verified)
                else:
                    log.info("%s: its transparency-log entry checks out", ref)
                log.info("Signature bundle of %s verified with %s", ref, key_path)
                return
            if not sigs:
                reason = why
    if reason is not None:
        hint = f"sign it with `cos sign --key cosign.key {ref}` (public key: {key_path})"
        if log_key is not None:
            hint = (
                "sign it with cosign and its transparency log, or drop tlog-key from the"
                " config to check the key alone"
            )
        raise SignatureError(f"refusing {ref}: {reason}", hint=hint)
    log.info("Signature of %s verified with %s", ref, key_path)


def _log_key(path: Path | None) -> tlog.LogKey | None:
    if path is None:
        return None
    try:
        return tlog.LogKey.load(path)
    except ValueError as exc:
        raise SignatureError(
            str(exc), hint="tlog-key names the log's ECDSA public key (PEM)"
        ) from exc


def _tlog_unchecked(ref: ImageRef, verified: bundle.Bundle) -> None:
    """Say that the transparency log plays no part, as cosign's --insecure-ignore-tlog."""
    if verified.tlog_entries:
        log.warning(
            "%s: the signature bundle carries a transparency-log entry that is not checked"
            " (no log key is configured); the key alone vouches for the image",
            ref,
        )
    else:
        log.info(
            "%s: the signature bundle has no transparency-log entry; the log is not checked"
            " (the key alone vouches for the image)",
            ref,
        )


def push_signature(
    ref: ImageRef,
    digest: str,
    payload: bytes,
    signature_b64: str,
    tls_verify: bool = True,
) -> str:
    """Append one signature to digest's `.sig` manifest; returns the stored reference."""
    existing = fetch_signatures(ref, digest, tls_verify, write=True)
    layers: list[tuple[bytes, str]] = [
        (s.payload, s.signature_b64) for s in existing if s.signature_b64 != signature_b64
    ]
    layers.append((payload, signature_b64))
    return store_signatures(ref, digest, layers, tls_verify)


def store_signatures(
    ref: ImageRef, digest: str, layers: list[tuple[bytes, str]], tls_verify: bool = True
) -> str:
    """Write digest's `.sig` manifest holding exactly layers (payload, base64 signature)."""
    sig = _sig_ref(ref, digest)
    with tempfile.TemporaryDirectory(prefix="cos-sign-") as tmp:
        layout = Path(tmp)
        OciLayout(layout).blobs.mkdir(parents=True)

        def put(data: bytes) -> str:
            d = sha256_digest(data)
            blob_path(layout, d).write_bytes(data)
            return d

        descs = [
            {
                "mediaType": cosign.PAYLOAD_TYPE,
                "size": len(p),
                "digest": put(p),
                "annotations": {cosign.SIGNATURE_ANNOTATION: s},
            }
            for p, s in layers
        ]
        config = json.dumps(
            {
                "architecture": "",
                "created": "0001-01-01T00:00:00Z",
                "history": [{"created": "0001-01-01T00:00:00Z"}],
                "os": "",
                "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descs]},
                "config": {},
            },
            separators=(",", ":"),
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": put(config)},
                "layers": descs,
            },
            separators=(",", ":"),
        ).encode()
        mdigest = put(manifest)
        (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": mdigest,
                    "size": len(manifest),
                    "annotations": {REF_NAME: "sig"},
                }
            ],
        }
        atomic_write(layout / "index.json", json.dumps(index))
        if ref.transport == Transport.DOCKER and registries_conf().origin(ref).insecure:
            tls_verify = False
        try:
            _copy(f"oci:{layout}:sig", sig.skopeo, tls_verify, dest_side=True)
        except ToolError as exc:
            raise ImageError(
                f"cannot store the signature as {sig}: "
                + (exc.stderr.strip().splitlines() or [str(exc)])[-1],
                hint="check write access to the repository (credentials in auth.json)",
            ) from exc
    return str(sig)
