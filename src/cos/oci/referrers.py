"""Sigstore bundles stored beside an image as OCI 1.1 referrers (cosign v3's place).

Finding them: the registry's referrers API (`GET /v2/<repo>/referrers/<digest>`),
and when it has none (404/400, as distribution 2.8 answers), the referrers tag
schema: an image index under the tag `sha256-<hex>`. Every listed manifest is read,
whatever its artifactType says (cosign 3.0.x listed bundles with the empty type), and
counts when its one layer is a bundle; everything is read into memory, capped, and
checked against its digest, so nothing reaches the disk before it is verified. An
OCI layout keeps the same index under the same tag.

Writing follows cosign: the bundle and the empty config `{}` as blobs, the referrer
manifest pushed by digest, and the tag index rewritten with the new entry (entries
sorted by digest). A registry with the referrers API lists the manifest by itself;
the tag is written anyway so older readers find it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from cos.errors import ImageError
from cos.fsutil import atomic_write
from cos.oci import bundle
from cos.oci.digest import check_digest, sha256_digest, short_digest
from cos.oci.jsondoc import load_json
from cos.oci.layout import REF_NAME, OciLayout
from cos.oci.reference import ImageRef, Transport
from cos.oci.registry import RegistryError
from cos.oci.remote import Repository

log = logging.getLogger("cos")

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
MAX_REFERRERS = 64
MAX_JSON = 4 << 20


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for digest."""
    return check_digest(digest, "manifest").replace(":", "-")


class _Place(Protocol):
    def index(self, subject: str) -> bytes | None: ...
    def manifest(self, digest: str) -> bytes: ...
    def blob(self, digest: str, cap: int) -> bytes: ...
    def put_blob(self, data: bytes) -> None: ...
    def put_manifest(self, data: bytes, tag: str | None, media_type: str) -> None: ...
    def subject(self, digest: str) -> dict[str, Any]: ...


class _Registry:
    def __init__(self, ref: ImageRef, tls_verify: bool, write: bool) -> None:
        self.client = Repository(ref, tls_verify, write=write)

    def index(self, subject: str) -> bytes | None:
        api = self.client.referrers(subject)
        if api is not None:
            return api
        try:
            data, media = self.client.manifest(fallback_tag(subject))
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        return data if media in (INDEX_TYPE, "") else None

    def manifest(self, digest: str) -> bytes:
        return self.client.manifest(digest)[0]

    def blob(self, digest: str, cap: int) -> bytes:
        return self.client.small_blob(digest, cap)

    def put_blob(self, data: bytes) -> None:
        self.client.put_blob(data)

    def put_manifest(self, data: bytes, tag: str | None, media_type: str) -> None:
        self.client.put_manifest(tag or sha256_digest(data), data, media_type)

    def subject(self, digest: str) -> dict[str, Any]:
        raw, media = self.client.manifest(digest)
        return {"mediaType": media or bundle.MANIFEST_TYPE, "size": len(raw), "digest": digest}


class _Layout:
    def __init__(self, ref: ImageRef) -> None:
        self.oci = OciLayout(Path(ref.name))

    def index(self, subject: str) -> bytes | None:
        d = self.oci.resolve(fallback_tag(subject))
        return None if d is None else self.oci.read_blob(d, "referrers index")

    def manifest(self, digest: str) -> bytes:
        return self.oci.read_blob(digest, "referrer manifest")

    def blob(self, digest: str, cap: int) -> bytes:
        return self.oci.read_blob(digest, "bundle", cap)

    def put_blob(self, data: bytes) -> None:
        path = self.oci.blob(sha256_digest(data))
        if not path.exists():
            atomic_write(path, data)

    def put_manifest(self, data: bytes, tag: str | None, media_type: str) -> None:
        self.put_blob(data)
        if tag is None:
            return
        doc = self.oci.index()
        doc["manifests"] = [
            m for m in doc["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag
        ] + [
            {
                "mediaType": media_type,
                "digest": sha256_digest(data),
                "size": len(data),
                "annotations": {REF_NAME: tag},
            }
        ]
        atomic_write(self.oci.root / "index.json", json.dumps(doc, separators=(",", ":")))

    def subject(self, digest: str) -> dict[str, Any]:
        raw = self.oci.read_blob(digest, "manifest")
        media = load_json(raw).get("mediaType") or bundle.MANIFEST_TYPE
        return {"mediaType": media, "size": len(raw), "digest": digest}


def _place(ref: ImageRef, tls_verify: bool, write: bool = False) -> _Place:
    if ref.transport == Transport.OCI:
        return _Layout(ref)
    if ref.transport == Transport.DOCKER:
        return _Registry(ref, tls_verify, write)
    raise ImageError(f"{ref}: signatures are kept in registries and OCI layouts only")


def _entries(raw: bytes | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    doc = load_json(raw)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ValueError("the referrers index is not an OCI index")
    manifests = doc.get("manifests") or []
    if not isinstance(manifests, list):
        raise ValueError("the referrers index has no list of manifests")
    return [m for m in manifests if isinstance(m, dict)][:MAX_REFERRERS]


def fetch_bundles(ref: ImageRef, digest: str, tls_verify: bool = True) -> list[bytes]:
    """The bundle blobs of every referrer of digest that holds one ([] when none)."""
    place = _place(ref, tls_verify)
    try:
        entries = _entries(place.index(digest))
    except (RegistryError, ValueError) as exc:
        raise ImageError(
            f"cannot read the referrers of {ref}: {exc}",
            hint="check that the registry is reachable",
        ) from exc
    out = []
    for entry in entries:
        try:
            doc = load_json(place.manifest(check_digest(entry.get("digest"), "referrer")))
            layers = doc.get("layers")
            subject = (doc.get("subject") or {}).get("digest")
            if not isinstance(layers, list) or len(layers) != 1 or subject not in (None, digest):
                continue
            layer = layers[0]
            if not str(layer.get("mediaType", "")).startswith(bundle.BUNDLE_PREFIX):
                continue
            out.append(place.blob(check_digest(layer.get("digest"), "bundle"), bundle.MAX_BUNDLE))
        except (ImageError, ValueError, AttributeError, TypeError) as exc:
            log.debug("skipping referrer %s of %s: %s", entry.get("digest"), ref, exc)
    return out


def push_bundle(ref: ImageRef, digest: str, data: bytes, tls_verify: bool = True) -> str:
    """Store a bundle as a referrer of digest and list it under the tag schema's tag."""
    place = _place(ref, tls_verify, write=True)
    try:
        subject = place.subject(digest)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = bundle.referrer_manifest(data, subject, created)
        place.put_blob(b"{}")
        place.put_blob(data)
        place.put_manifest(manifest, None, bundle.MANIFEST_TYPE)
        tag = fallback_tag(digest)
        try:
            old = _entries(place.index(digest))
        except ValueError:
            old = []  # not an index: start a new one, as cosign does
        entry = {
            "mediaType": bundle.MANIFEST_TYPE,
            "size": len(manifest),
            "digest": sha256_digest(manifest),
            "artifactType": bundle.BUNDLE_TYPE,
        }
        entries = [e for e in old if e.get("digest") != entry["digest"]] + [entry]
        entries.sort(key=lambda e: str(e.get("digest")))
        index = json.dumps(
            {"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": entries},
            separators=(",", ":"),
        ).encode()
        place.put_manifest(index, tag, INDEX_TYPE)
    except RegistryError as exc:
        raise ImageError(
            f"cannot store the signature bundle of {ref}: {exc.message}",
            hint=exc.hint or "check write access to the repository (credentials in auth.json)",
        ) from exc
    log.debug("bundle %s stored for %s", short_digest(sha256_digest(manifest)), digest)
    return f"{ref.name}:{tag}" if ref.transport == Transport.DOCKER else f"oci:{ref.name}:{tag}"
