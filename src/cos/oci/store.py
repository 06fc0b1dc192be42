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
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.config import Trust
from cos.errors import ImageError, ToolError
from cos.fsutil import atomic_write, fsync_dir, ram_room
from cos.log import log
from cos.oci.digest import blob_path, check_digest, sha256_digest, short_digest
from cos.oci.image import LocalImage
from cos.oci.jsondoc import load_json
from cos.oci.layout import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_JSON,
    REF_NAME,
    LayoutError,
    OciLayout,
    config_diff_ids,
    image_descriptors,
)
from cos.oci.progress import PullProgress
from cos.oci.reference import ImageRef, Transport
from cos.oci.streams import Source, decompressor

STORE_DIR = ".store"
# Assumed for layers whose uncompressed size is not known yet (OS trees: 2.5-3x).
COMPRESSION_RATIO = 3
TAR_SIZES = "tar-sizes"  # beside blobs/: one file per layer, its counted tar size
SPOOL_DIR = "spool"  # in the run directory
SPOOL_SLACK = 64 << 20  # RAM left to everything else when blobs are spooled


def snapshot_tag(n: int) -> str:
    return f"snapshot-{n}"


@dataclass(frozen=True)
class RemoteImage:
    """What a registry says about an image before anything is pulled."""

    ref: ImageRef
    digest: str  # manifest digest (the single-platform manifest)
    layers: tuple[tuple[str, int], ...]  # (digest, compressed size)
    config: tuple[str, int]
    manifest: bytes = b""  # the raw manifest (stored as read, so the digest stays)
    media_type: str = MANIFEST_TYPES[0]
    config_blob: bytes = b""  # the config as read and checked (b"": not read)
    diff_ids: tuple[str, ...] = ()  # the config's, one per layer (): not read)

    def layer_ids(self) -> list[tuple[str, str | None]]:
        """(blob digest, diff_id) per layer, base first."""
        ids: list[str | None] = list(self.diff_ids) or [None] * len(self.layers)
        return [(d, i) for (d, _), i in zip(self.layers, ids, strict=True)]


def _document(raw: bytes) -> dict[str, Any]:
    doc = load_json(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _platform_manifest(index: dict[str, Any], arch: str) -> str | None:
    """Digest of the linux/arch manifest an image index lists (None: it lists none)."""
    manifests = index.get("manifests", [])
    if not isinstance(manifests, list):
        raise ValueError("'manifests' is not a list")
    for m in manifests:
        platform = m.get("platform") if isinstance(m, dict) else None
        if (
            isinstance(platform, dict)
            and platform.get("os") == "linux"
            and platform.get("architecture") == arch
        ):
            return check_digest(m.get("digest"), "platform manifest")
    return None


def inspect_remote(
    ref: ImageRef, tls_verify: bool = True, arch: str = "amd64", key: Trust | None = None
) -> RemoteImage:
    """Read the manifest (resolving a multi-platform index to linux/arch) and the config.

    Both are checked as the unpacker checks them, so an image that could never be
    unpacked is refused before its layers are pulled. With key, the image must carry
    a signature by it (on the index or on the platform manifest, as cosign signs
    either) before the config is read and before the caller writes anything.
    """
    # The registry client and the signature checks (http, cryptography) are imported
    # where a pull needs them: commands that only read the store start faster.
    from cos.oci.registry import RegistryError
    from cos.oci.remote import Repository
    from cos.oci.signatures import require_signed

    signed: set[str] = set()
    try:
        client = Repository(ref, tls_verify)
        raw, media = client.manifest(ref.digest or ref.tag or "latest")
        doc = _document(raw)
        if "manifests" in doc and "layers" in doc:
            raise ValueError("both 'manifests' and 'layers' (ambiguous document)")
        if doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            pick = _platform_manifest(doc, arch)
            if pick is None:
                raise ImageError(
                    f"image {ref} has no linux/{arch} variant",
                    hint="build or push the image for this architecture, or pass --platform",
                )
            signed.add(sha256_digest(raw))
            raw, media = client.manifest(pick)
            doc = _document(raw)
        digest = sha256_digest(raw)
        config, layers = image_descriptors(doc, digest)
        if key is not None:
            require_signed(ref, {digest, *signed}, key, tls_verify)
        config_blob = client.small_blob(config.digest, MAX_JSON)
        if len(config_blob) != config.size:
            raise ValueError(
                f"config is {len(config_blob)} bytes, its descriptor says {config.size}"
            )
        diff_ids = config_diff_ids(_document(config_blob), config.digest, len(layers))
    except RegistryError as exc:
        raise ImageError(
            f"cannot read image {ref}: {exc.message}",
            hint=exc.hint or "check the reference and that the registry is reachable",
        ) from exc
    except LayoutError as exc:
        raise ImageError(f"image {ref}: {exc.message}", hint=exc.hint) from exc
    except ValueError as exc:
        raise ImageError(f"image {ref} has an unreadable manifest or config: {exc}") from exc
    media = next(
        (m for m in (doc.get("mediaType"), media) if m in MANIFEST_TYPES), MANIFEST_TYPES[0]
    )
    return RemoteImage(
        ref,
        digest,
        tuple((d.digest, d.size) for d in layers),
        (config.digest, config.size),
        raw,
        str(media),
        config_blob,
        tuple(diff_ids),
    )


def spool_for(run_dir: Path, need: int) -> Path | None:
    """A directory in RAM (the run directory, a tmpfs on a booted system) for layer blobs
    that the snapshotter turns into its own form and then drops: fetched there, they are
    never written to the device. Only when twice their size fits beside what RAM and the
    run directory already hold; else None, and they go to the store as before."""
    if need <= 0 or 2 * need + SPOOL_SLACK > ram_room(run_dir):
        return None
    return run_dir / SPOOL_DIR


class LayerStore:
    def __init__(self, path: Path, spool: Path | None = None):
        """spool: where layer blobs are fetched instead of the store (spool_for)."""
        self.path = Path(path)
        self.layout = OciLayout(
            self.path,
            "the layer store",
            "remove it; the next upgrade pulls every layer again",
            spool=spool,
        )

    @classmethod
    def on(cls, state_dir: Path, spool: Path | None = None) -> LayerStore:
        return cls(Path(state_dir) / STORE_DIR, spool)

    # -- reading ------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return self.layout.blob(digest).is_file()

    def missing(
        self, remote: RemoteImage, held: Collection[str] = frozenset()
    ) -> list[tuple[str, int]]:
        """Blobs to fetch: those the store lacks, but for the layers (by blob digest) in
        held, whose content the snapshotter keeps in its own form."""
        return [
            (d, s) for d, s in (*remote.layers, remote.config) if d not in held and not self.has(d)
        ]

    def _index(self) -> dict[str, Any]:
        if not self.layout.exists():
            return {"schemaVersion": 2, "manifests": []}
        return self.layout.index()

    def tags(self) -> dict[str, str]:
        return self.layout.tags() if self.layout.exists() else {}

    def image(self, ref: ImageRef, tag: str) -> LocalImage:
        digest = self.tags().get(tag)
        if digest is None:
            raise ImageError(f"the layer store has no {tag}")
        return LocalImage(ref, self.path, tag, digest)

    def layers(self, tag: str) -> list[str]:
        """Layer digests of a tag's manifest."""
        digest = self.tags().get(tag)
        if digest is None:
            return []
        manifest = self.layout.read_json(digest, "manifest")
        return [str(x["digest"]) for x in manifest.get("layers", [])]

    def tar_size(self, digest: str) -> int:
        """Bytes of a stored layer's tar stream: what it needs unpacked, before block rounding.

        Counted once by decompressing the blob, then recorded beside it (TAR_SIZES): gzip's
        trailer holds the size mod 2**32 (of the last member only), which cannot tell an
        incompressible layer, a little larger compressed, from one of more than 4 GiB.
        """
        recorded = self.known_tar_size(digest)
        if recorded is not None:
            return recorded
        blob = self.layout.blob(digest)
        try:
            with open(blob, "rb") as f:
                size = sum(len(chunk) for chunk in decompressor(Source(f), "", f"layer {digest}"))
        except ImageError:  # damaged: using it fails later, with the re-pull hint
            return blob.stat().st_size * COMPRESSION_RATIO
        self._record_tar_size(digest, size)
        return size

    def _tar_size_file(self, digest: str) -> Path:
        return self.path / TAR_SIZES / digest.removeprefix("sha256:")

    def known_tar_size(self, digest: str) -> int | None:
        """The tar size counted earlier (by the pull's pre-flight), without counting now."""
        try:
            text = self._tar_size_file(digest).read_text()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isascii() and text.isdigit() and len(text) < 20 else None

    def _record_tar_size(self, digest: str, size: int) -> None:
        try:
            self._tar_size_file(digest).parent.mkdir(exist_ok=True)
            atomic_write(self._tar_size_file(digest), str(size))
        except OSError:  # a store that cannot be written counts again next time
            pass

    def unpacked_size(self, tag: str) -> int:
        return sum(self.tar_size(d) for d in self.layers(tag))

    def estimated_tar_size(self, remote: RemoteImage) -> int:
        """Unpacked size of remote: exact for layers held here, estimated for the rest."""
        return sum(self.estimated_tar_sizes(remote))

    def estimated_tar_sizes(self, remote: RemoteImage) -> list[int]:
        """Each layer's unpacked size, base first (exact when held, else estimated)."""
        return [
            self.tar_size(d) if self.has(d) else s * COMPRESSION_RATIO for d, s in remote.layers
        ]

    # -- writing ------------------------------------------------------------------
    def pull(
        self,
        remote: RemoteImage,
        tag: str,
        tls_verify: bool = True,
        progress: PullProgress | None = None,
        held: Collection[str] = frozenset(),
    ) -> LocalImage:
        """Fetch the blobs the store lacks (resuming partial ones), then tag the manifest.
        Layers in held (blob digests) are not fetched: their content is on the device
        in the snapshotter's form already.

        Blobs land under their digest only once verified; the tag is written last, so
        an interrupted pull leaves the store as it was plus verified blobs and
        `.partial` files that the next pull continues.
        """
        from cos.oci.registry import RegistryError
        from cos.oci.remote import Repository

        client = Repository(remote.ref, tls_verify)
        self.layout.blobs.mkdir(parents=True, exist_ok=True)
        self.heal(remote)
        missing = self.missing(remote, held)
        report = progress or PullProgress.for_terminal()
        with report.running(sum(s for _, s in missing)):
            for digest, size in missing:
                if digest == remote.config[0] and remote.config_blob:
                    atomic_write(self.layout.blob(digest), remote.config_blob)  # checked
                    report.track(digest, size)(size)
                    continue
                try:
                    dest = blob_path(self.path, digest)
                    if self.layout.spool is not None and digest != remote.config[0]:
                        self.layout.spool.mkdir(parents=True, exist_ok=True)
                        dest = self.layout.spool / dest.name
                    client.blob(digest, size, dest, report.track(digest, size))
                except RegistryError as exc:
                    raise ImageError(f"pulling {remote.ref}: {exc.message}", hint=exc.hint) from exc
        if not (self.path / "oci-layout").exists():
            atomic_write(self.path / "oci-layout", '{"imageLayoutVersion":"1.0.0"}')
        atomic_write(self.layout.blob(remote.digest), remote.manifest)
        self.sync()
        self._tag(remote.digest, len(remote.manifest), remote.media_type, tag)
        return LocalImage(remote.ref, self.path, tag, remote.digest, self.layout.spool)

    def heal(self, remote: RemoteImage) -> list[str]:
        """Check the blobs of remote the store already has; a damaged one (bit rot, a
        torn write) is dropped so the pull fetches it again, instead of failing every
        upgrade from now on. Returns the digests dropped."""
        dropped = []
        for digest, size in (*remote.layers, remote.config):
            blob = self.layout.blob(digest)
            if not blob.is_file():
                continue
            h = hashlib.sha256()
            with open(blob, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            if blob.stat().st_size == size and f"sha256:{h.hexdigest()}" == digest:
                continue
            log.warning(
                "layer store: blob %s is damaged (its content does not match its digest);"
                " it is fetched again",
                short_digest(digest),
            )
            blob.unlink()
            dropped.append(digest)
        return dropped

    def _tag(self, digest: str, size: int, media_type: str, tag: str) -> None:
        index = self._index()
        manifests = [
            m for m in index.get("manifests", []) if m.get("annotations", {}).get(REF_NAME) != tag
        ]
        manifests.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": size,
                "annotations": {REF_NAME: tag},
            }
        )
        index["manifests"] = manifests
        index.setdefault("schemaVersion", 2)
        atomic_write(self.path / "index.json", json.dumps(index, separators=(",", ":")))

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
        for digest in self.layers(tag):
            # Counted here, on the machine that builds the disk, and kept with the store:
            # the device's first upgrade need not decompress what it already has.
            self.tar_size(digest)

    def release(self, held: Callable[[str], bool]) -> int:
        """Drop the blobs of layers whose content the snapshotter holds (held(diff_id)):
        no second copy of a layer on the device. Manifests, configs and recorded tar
        sizes stay, so what an image is made of and what the next upgrade lacks are still
        known. Returns the bytes freed."""
        freed = 0
        for digest in set(self.tags().values()):
            try:
                for layer in self.layout.image_layers(digest):
                    blob = layer.path
                    if layer.diff_id is not None and blob.is_file() and held(layer.diff_id):
                        freed += blob.stat().st_size
                        blob.unlink()
            except (ImageError, LayoutError):  # unreadable: kept as it is
                continue
        if freed:
            fsync_dir(self.layout.blobs)
        return freed

    def keep_only(self, tags: set[str]) -> int:
        """Drop other tags and every blob no kept tag references; returns bytes freed."""
        if not self.layout.exists():
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
                manifest = self.layout.read_json(d, "manifest")
            except ImageError:  # unreadable: what it referenced is not protected
                continue
            live.add(str(manifest.get("config", {}).get("digest")))
            live.update(str(x.get("digest")) for x in manifest.get("layers", []))
        freed = 0
        blobs = self.layout.blobs
        if blobs.is_dir():
            for b in blobs.iterdir():
                if f"sha256:{b.name}" not in live:
                    freed += b.stat().st_size
                    b.unlink()
            fsync_dir(blobs)
        sizes = self.path / TAR_SIZES
        if sizes.is_dir():
            for f in sizes.iterdir():
                if f"sha256:{f.name}" not in live:
                    f.unlink()
        return freed

    def sync(self) -> None:
        """Make the pulled blobs durable before a snapshot refers to them."""
        blobs = self.layout.blobs
        for b in blobs.iterdir() if blobs.is_dir() else []:
            fd = os.open(b, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if blobs.is_dir():
            fsync_dir(blobs)
        fsync_dir(self.path)


def _cache_tag(ref: ImageRef) -> str:
    """A readable tag for ref; OCI layout tags allow single separators only."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", str(ref)).strip("-")[:100].strip("-")
    return readable + "-" + hashlib.sha256(str(ref).encode()).hexdigest()[:8]


def fetch(
    ref: ImageRef,
    cache: Path,
    tls_verify: bool = True,
    key: Trust | None = None,
    arch: str | None = None,
) -> LocalImage:
    """Make the image available in an OCI layout: an `oci:` layout as it is, a registry
    image pulled into the cache's layer store (only blobs it lacks, resumable).

    With key, a cosign signature by it must vouch for the image before anything is
    copied (for an `oci:` layout, its `.sig` tag in the same layout).
    """
    if ref.transport == Transport.OCI:
        layout = OciLayout(Path(ref.name))
        tag = ref.tag or "latest"
        if not layout.exists():
            raise ImageError(
                f"{ref}: {layout.root} is not an OCI layout (no index.json)",
                hint="point oci: at a directory written by skopeo, buildah or umoci",
            )
        digest = layout.resolve(tag)
        if digest is None:
            raise ImageError(f"{ref}: tag {tag!r} not found in {layout.root}", hint="check the tag")
        if key is not None:
            from cos.oci.signatures import require_signed

            require_signed(ref, {digest}, key, tls_verify)
        return LocalImage(ref, layout.root, tag, digest)
    if ref.transport in (Transport.OCI_ARCHIVE, Transport.DIR):
        if key is not None:
            raise ImageError(
                f"{ref}: signatures can only be checked for registry and oci: sources",
                hint="push the image (or copy it into an OCI layout with its .sig tag)",
            )
        if not Path(ref.name).exists():
            raise ImageError(f"{ref}: {ref.name} does not exist", hint="check the path")
        if ref.transport == Transport.DIR:
            if not Path(ref.name).is_dir():
                raise ImageError(f"{ref}: {ref.name} is not a directory", hint="check the path")
            return LocalImage(ref, Path(ref.name), "", "")
    store = LayerStore(cache / "oci")
    if ref.transport == Transport.OCI_ARCHIVE:
        store.path.mkdir(parents=True, exist_ok=True)
        tag = _cache_tag(ref)
        try:
            runner.run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--preserve-digests",
                    ref.skopeo,
                    f"oci:{store.path}:{tag}",
                ]
            )
        except ToolError as exc:
            raise ImageError(
                f"cannot read {ref}: {(exc.stderr.strip().splitlines() or [str(exc)])[-1]}",
                hint="the file must be an OCI archive (skopeo copy … oci-archive:FILE:TAG)",
            ) from exc
        return store.image(ref, tag)
    remote = inspect_remote(ref, tls_verify, arch or "amd64", key)
    try:
        store.path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageError(
            f"cannot create the image cache {store.path}: {exc.strerror}",
            hint="set cache-dir in config (or COS_CACHE_DIR) to a writable directory",
        ) from exc
    return store.pull(remote, _cache_tag(ref), tls_verify)
