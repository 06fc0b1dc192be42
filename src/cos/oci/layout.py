"""Reading an OCI image layout (a directory with `index.json` and `blobs/sha256/`).

Layouts come from users (`oci:DIR`), from skopeo, from the image cache and from the
layer store on a device, so everything read from one is checked before it is used:
index.json must have the documented shape, a digest must be well formed before it
becomes a file name, and a manifest or config is read with a size cap and must hash
to the digest that named it. What a manifest digest pins (the thing signatures
cover) is then exactly what gets unpacked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos.errors import ImageError
from cos.oci.digest import blob_path, check_digest, sha256_digest, short_digest
from cos.oci.jsondoc import load_json

REF_NAME = "org.opencontainers.image.ref.name"
MAX_JSON = 4 << 20  # manifest, index and config
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_RECOPY = "re-copy the image into the layout"


class LayoutError(ImageError):
    """An OCI layout that is missing, damaged, or does not hold what it should."""


@dataclass(frozen=True)
class LayerBlob:
    """One layer to apply: its blob file and what the blob must turn out to be."""

    path: Path
    media_type: str
    label: str  # how errors name the layer
    digest: str | None = None  # None: not checked (layers given as plain files)
    size: int | None = None
    diff_id: str | None = None


class OciLayout:
    """One layout directory; label and hint say what it is to the user when it is damaged."""

    def __init__(
        self,
        root: Path,
        label: str = "the OCI layout",
        hint: str = "rebuild or re-copy the layout",
        spool: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.label = label
        self.hint = hint
        self.spool = spool

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    def blob(self, digest: str) -> Path:
        """The blob's file: in the layout, else in the spool when it was fetched there."""
        path = blob_path(self.root, digest)
        if self.spool is not None and not path.is_file():
            spooled = self.spool / path.name
            if spooled.is_file():
                return spooled
        return path

    def exists(self) -> bool:
        return (self.root / "index.json").is_file()

    def require(self) -> None:
        if not self.exists():
            raise LayoutError(
                f"{self.root} is not an OCI layout (no index.json)",
                hint="point at a directory written by skopeo, buildah or umoci",
            )

    # -- index.json ---------------------------------------------------------------------

    def _damaged(self, why: object) -> LayoutError:
        return LayoutError(f"{self.label} {self.root} is damaged (index.json: {why})", self.hint)

    def index(self) -> dict[str, Any]:
        """index.json as a dict whose `manifests` is a list of descriptor objects."""
        try:
            with open(self.root / "index.json", "rb") as f:
                raw = f.read(MAX_JSON + 1)
            if len(raw) > MAX_JSON:
                raise ValueError(f"larger than {MAX_JSON} bytes")
            doc = load_json(raw)
        except (OSError, ValueError) as exc:
            raise self._damaged(exc) from exc
        if not isinstance(doc, dict):
            raise self._damaged("not a JSON object")
        manifests = doc.setdefault("manifests", [])
        if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
            raise self._damaged("'manifests' is not a list of objects")
        if not all(isinstance(m.get("annotations", {}), dict) for m in manifests):
            raise self._damaged("'annotations' is not an object")
        return doc

    def tags(self) -> dict[str, str]:
        """Tag name to manifest digest, for every descriptor that carries a tag."""
        out = {}
        for m in self.index()["manifests"]:
            name = m.get("annotations", {}).get(REF_NAME)
            if isinstance(name, str):
                out[name] = check_digest(m.get("digest"), f"{self.root}: tag {name!r}")
        return out

    def resolve(self, tag: str) -> str | None:
        """Manifest digest of tag (None if the layout has no such tag)."""
        return self.tags().get(tag)

    # -- blobs --------------------------------------------------------------------------

    def read_blob(
        self,
        digest: str,
        what: str = "blob",
        cap: int = MAX_JSON,
        size: int | None = None,
        verify: bool = True,
    ) -> bytes:
        """A small blob's bytes: at most cap, of the descriptor's size, hashing to digest.

        verify=False leaves the digest check to the caller (cosign verification names
        a payload that does not match as a reason, not as a damaged layout).
        """
        path = blob_path(self.root, check_digest(digest, what))
        try:
            with open(path, "rb") as f:
                raw = f.read(cap + 1)
        except OSError as exc:
            raise LayoutError(
                f"{what} {digest} is not in {self.root}: {exc.strerror}", hint=_RECOPY
            ) from exc
        if len(raw) > cap:
            raise LayoutError(f"{what} {digest} is larger than {cap} bytes")
        if size is not None and len(raw) != size:
            raise LayoutError(f"{what} {digest} is {len(raw)} bytes, its descriptor says {size}")
        if verify and sha256_digest(raw) != digest:
            raise LayoutError(
                f"{what} {digest} does not match its digest",
                hint="the layout is corrupt; re-copy it",
            )
        return raw

    def read_json(self, digest: str, what: str, size: int | None = None) -> dict[str, Any]:
        """A manifest, index or config: checked like read_blob, and a JSON object."""
        raw = self.read_blob(digest, what, MAX_JSON, size)
        try:
            doc = load_json(raw)
        except ValueError as exc:
            raise LayoutError(f"{what} {digest} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise LayoutError(f"{what} {digest} is not a JSON object")
        return doc

    # -- images -------------------------------------------------------------------------

    def image_layers(self, manifest_digest: str) -> list[LayerBlob]:
        """The layers of an image manifest, base first, each with the checks its blob owes.

        Sizes and digests come from the manifest and diff_ids from the config, both read
        through their own digests, so every byte applied is pinned by manifest_digest.
        """
        manifest_digest = check_digest(manifest_digest, "manifest")
        self.require()
        manifest = self.read_json(manifest_digest, "manifest")
        config, layers = image_descriptors(manifest, manifest_digest)
        diff_ids = config_diff_ids(
            self.read_json(config.digest, "config", config.size), config.digest, len(layers)
        )
        return [
            LayerBlob(self.blob(d.digest), d.media_type, d.label, d.digest, d.size, diff_id)
            for d, diff_id in zip(layers, diff_ids, strict=True)
        ]


@dataclass(frozen=True)
class Descriptor:
    """A checked descriptor: a well-formed digest, a size, a media type, how errors name it."""

    digest: str
    size: int
    media_type: str
    label: str


def image_descriptors(
    manifest: dict[str, Any], manifest_digest: str
) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layer descriptors of an image manifest, checked as the unpacker needs
    them: the one place that says what a usable manifest is (layouts and registries)."""
    if "manifests" in manifest:
        raise LayoutError(
            f"{manifest_digest} is an image index, not a manifest",
            hint="pass the digest of the platform manifest",
        )
    media_type = manifest.get("mediaType", MANIFEST_TYPES[0])
    if media_type not in MANIFEST_TYPES or manifest.get("schemaVersion") != 2:
        raise LayoutError(
            f"manifest {manifest_digest}: unsupported type {str(media_type)[:80]!r}",
            hint="only OCI and Docker schema 2 image manifests can be unpacked",
        )
    config = _descriptor(manifest.get("config"), "config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise LayoutError(f"manifest {manifest_digest} has no layer list")
    out = []
    for i, desc in enumerate(layers, 1):
        d = _descriptor(desc, f"layer {i}/{len(layers)}")
        if d.media_type not in LAYER_MEDIA_TYPES:
            raise LayoutError(
                f"{d.label}: unsupported media type {d.media_type[:80]!r}",
                hint="layers must be tar, tar+gzip or tar+zstd",
            )
        out.append(d)
    return config, out


def config_diff_ids(config: dict[str, Any], config_digest: str, layers: int) -> list[str]:
    """The config's diff_ids, one well-formed digest per layer of the manifest."""
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict):
        rootfs = {}
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or rootfs.get("type") != "layers":
        raise LayoutError(
            f"config {config_digest} has no rootfs.diff_ids", hint="rebuild the image"
        )
    if len(diff_ids) != layers:
        raise LayoutError(
            f"the manifest has {layers} layers, config {config_digest} lists"
            f" {len(diff_ids)} diff_ids",
            hint="the image is inconsistent; rebuild it",
        )
    return [check_digest(d, f"layer {i}/{layers} diff_id") for i, d in enumerate(diff_ids, 1)]


def _descriptor(doc: object, what: str) -> Descriptor:
    """A descriptor object's digest (checked), size and media type."""
    if not isinstance(doc, dict):
        raise LayoutError(f"{what}: descriptor is not an object")
    digest = check_digest(doc.get("digest"), what)
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LayoutError(f"{what}: descriptor has no valid size")
    media_type = doc.get("mediaType")
    label = what if what == "config" else f"{what} ({short_digest(digest)})"
    return Descriptor(digest, size, media_type if isinstance(media_type, str) else "", label)
