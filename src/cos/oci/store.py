"""The layer store on a device: an OCI layout in COS_STATE (`.store/`).

It holds the blobs that kept snapshots came from, one tag per snapshot
(`snapshot-N`). An upgrade pulls into it, so only the layers the device does not
already hold travel over the network; pruning a snapshot drops its tag and the
blobs no other tag references.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.errors import ImageError, ToolError
from cos.fsutil import atomic_write, fsync_dir
from cos.oci.image import LocalImage, copy_pinned
from cos.oci.reference import ImageRef
from cos.oci.signatures import require_signed
from cos.oci.transport import layout_digest, registry_env, unreadable

STORE_DIR = ".store"
# Assumed for layers whose uncompressed size is not known yet (OS trees: 2.5-3x).
COMPRESSION_RATIO = 3
REF_NAME = "org.opencontainers.image.ref.name"
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


def snapshot_tag(n: int) -> str:
    return f"snapshot-{n}"


@dataclass(frozen=True)
class RemoteImage:
    """What a registry says about an image before anything is pulled."""

    ref: ImageRef
    digest: str  # manifest digest (the single-platform manifest)
    layers: tuple[tuple[str, int], ...]  # (digest, compressed size)
    config: tuple[str, int]


def _skopeo_raw(ref: str, tls_verify: bool) -> bytes:
    tls = f"--tls-verify={'true' if tls_verify else 'false'}"
    return runner.run(["skopeo", "inspect", "--raw", tls, ref], env=registry_env()).stdout.encode()


def inspect_remote(
    ref: ImageRef, tls_verify: bool = True, arch: str = "amd64", key: Path | None = None
) -> RemoteImage:
    """Read the manifest (resolving a multi-platform index to linux/arch).

    With key, the image must carry a signature by it (on the index or on the
    platform manifest, as cosign signs either) before the caller writes anything.
    """
    signed: set[str] = set()
    try:
        raw = _skopeo_raw(ref.skopeo, tls_verify)
        doc = json.loads(raw)
        if doc.get("mediaType") in _INDEX_TYPES or "manifests" in doc:
            pick = [
                m
                for m in doc.get("manifests", [])
                if m.get("platform", {}).get("os") == "linux"
                and m.get("platform", {}).get("architecture") == arch
            ]
            if not pick:
                raise ImageError(
                    f"image {ref} has no linux/{arch} variant",
                    hint="build or push the image for this architecture",
                )
            signed.add("sha256:" + hashlib.sha256(raw).hexdigest())
            pinned = ImageRef("docker", ref.name, None, str(pick[0]["digest"]))
            raw = _skopeo_raw(pinned.skopeo, tls_verify)
            doc = json.loads(raw)
    except ToolError as exc:
        raise unreadable(ref, exc, tls_verify) from exc
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise ImageError(f"image {ref} has an unreadable manifest: {exc}") from exc
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if ref.digest and ref.digest != digest and not (doc.get("manifests")):
        # A pinned single-platform reference must name exactly these bytes.
        raise ImageError(f"image {ref}: registry returned manifest {digest}, not {ref.digest}")
    try:
        layers = tuple((str(x["digest"]), int(x["size"])) for x in doc["layers"])
        config = (str(doc["config"]["digest"]), int(doc["config"]["size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageError(f"image {ref}: manifest without layers or config ({exc})") from exc
    if key is not None:
        require_signed(ref, {digest, *signed}, key, tls_verify)
    return RemoteImage(ref, digest, layers, config)


class LayerStore:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def on(cls, state_dir: Path) -> LayerStore:
        return cls(Path(state_dir) / STORE_DIR)

    # -- reading ------------------------------------------------------------------
    def _blob(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.path / "blobs" / algo / hexd

    def has(self, digest: str) -> bool:
        return self._blob(digest).is_file()

    def missing(self, remote: RemoteImage) -> list[tuple[str, int]]:
        return [(d, s) for d, s in (*remote.layers, remote.config) if not self.has(d)]

    def _index(self) -> dict[str, Any]:
        p = self.path / "index.json"
        if not p.is_file():
            return {"schemaVersion": 2, "manifests": []}
        try:
            data = json.loads(p.read_text())
            assert isinstance(data, dict)
            return data
        except (ValueError, AssertionError, OSError) as exc:
            raise ImageError(
                f"the layer store {self.path} is damaged (index.json: {exc})",
                hint="remove it; the next upgrade pulls every layer again",
            ) from exc

    def tags(self) -> dict[str, str]:
        return {
            m.get("annotations", {}).get(REF_NAME, ""): str(m.get("digest"))
            for m in self._index().get("manifests", [])
        }

    def image(self, ref: ImageRef, tag: str) -> LocalImage:
        digest = layout_digest(self.path, tag)
        if digest is None:
            raise ImageError(f"the layer store has no {tag}")
        return LocalImage(ref, self.path, tag, digest)

    def layers(self, tag: str) -> list[str]:
        """Layer digests of a tag's manifest."""
        digest = self.tags().get(tag)
        if digest is None:
            return []
        manifest = json.loads(self._blob(digest).read_text())
        return [str(x["digest"]) for x in manifest.get("layers", [])]

    def tar_size(self, digest: str) -> int:
        """Bytes of a stored layer's tar stream: what it needs unpacked, before block rounding.

        gzip keeps the uncompressed size (mod 2**32) in its last four bytes; layers are
        single gzip members, so this is exact and costs one read per layer. A size that
        wrapped is corrected with the compressed size as the lower bound. Other
        compressions are estimated.
        """
        blob = self._blob(digest)
        size = blob.stat().st_size
        with open(blob, "rb") as f:
            magic = f.read(4)
            if magic[:2] != b"\x1f\x8b":
                return size * (1 if magic[:4] != b"\x28\xb5\x2f\xfd" else COMPRESSION_RATIO)
            f.seek(-4, os.SEEK_END)
            isize = int.from_bytes(f.read(4), "little")
        while isize < size:
            isize += 1 << 32
        return isize

    def unpacked_size(self, tag: str) -> int:
        return sum(self.tar_size(d) for d in self.layers(tag))

    def estimated_tar_size(self, remote: RemoteImage) -> int:
        """Unpacked size of remote: exact for layers held here, estimated for the rest."""
        return sum(
            self.tar_size(d) if self.has(d) else s * COMPRESSION_RATIO for d, s in remote.layers
        )

    # -- writing ------------------------------------------------------------------
    def pull(self, remote: RemoteImage, tag: str, tls_verify: bool = True) -> LocalImage:
        """Copy the image pinned by digest into the store; existing blobs are reused."""
        self.path.mkdir(parents=True, exist_ok=True)
        copy_pinned(remote.ref, remote.digest, self.path, tag, tls_verify)
        got = layout_digest(self.path, tag)
        if got != remote.digest:
            raise ImageError(
                f"pulling {remote.ref}: stored manifest {got}, expected {remote.digest}"
            )
        self.sync()
        return LocalImage(remote.ref, self.path, tag, remote.digest)

    def add(self, image: LocalImage, tag: str) -> None:
        """Seed the store with an image from another layout (build-disk, install)."""
        self.path.mkdir(parents=True, exist_ok=True)
        runner.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                f"oci:{image.layout}:{image.tag}",
                f"oci:{self.path}:{tag}",
            ]
        )

    def retag(self, old: str, new: str) -> None:
        index = self._index()
        for m in index.get("manifests", []):
            ann = m.setdefault("annotations", {})
            if ann.get(REF_NAME) == old:
                ann[REF_NAME] = new
        atomic_write(self.path / "index.json", json.dumps(index, separators=(",", ":")))

    def keep_only(self, tags: set[str]) -> int:
        """Drop other tags and every blob no kept tag references; returns bytes freed."""
        if not (self.path / "index.json").is_file():
            return 0
        index = self._index()
        kept = [
            m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) in tags
        ]
        if len(kept) != len(index.get("manifests", [])):
            index["manifests"] = kept
            atomic_write(self.path / "index.json", json.dumps(index, separators=(",", ":")))
        live: set[str] = set()
        for m in kept:
            d = str(m["digest"])
            live.add(d)
            try:
                manifest = json.loads(self._blob(d).read_text())
            except (OSError, ValueError):
                continue
            live.add(str(manifest.get("config", {}).get("digest")))
            live.update(str(x.get("digest")) for x in manifest.get("layers", []))
        freed = 0
        blobs = self.path / "blobs" / "sha256"
        if blobs.is_dir():
            for b in blobs.iterdir():
                if f"sha256:{b.name}" not in live:
                    freed += b.stat().st_size
                    b.unlink()
            fsync_dir(blobs)
        return freed

    def sync(self) -> None:
        """Make the pulled blobs durable before a snapshot refers to them."""
        blobs = self.path / "blobs" / "sha256"
        for b in blobs.iterdir() if blobs.is_dir() else []:
            fd = os.open(b, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if blobs.is_dir():
            fsync_dir(blobs)
        fsync_dir(self.path)
