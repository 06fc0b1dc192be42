"""Hostile OCI images for the robustness suite: mutated documents and layer headers.

Everything starts from one small valid image (one layer holding /etc/os-release) and
is bent by hypothesis strategies: the index, manifest and config documents get values
of the wrong type, missing or extra keys, keys given twice, huge and non-finite
numbers, non-ASCII text, nesting thousands deep, foreign digests and sizes, unknown
media types; the layer tar gets hand-made headers (sizes that lie or do not parse,
PAX records with odd keys and lengths, long names, wrong checksums, chains of
extended headers) and is cut or overwritten at random. A document that was mutated is
usually re-hashed into its parent's descriptor, so the parsers behind the digest
checks are reached too.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from cos.oci import bundle, cosign, referrers
from tests.support.hostile_tar import clean_layer, layers

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
ZERO = "sha256:" + "0" * 64
KEY = cosign.generate_key()  # the key images are signed with (FORGER: any other)
FORGER = cosign.generate_key()


@dataclass(frozen=True)
class Raw:
    """JSON text put into a document as it is (numbers json cannot write, deep nesting)."""

    text: str


@dataclass(frozen=True)
class Dup:
    """An object whose keys may repeat (json.loads keeps the last)."""

    pairs: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Blob:
    """Stands for a real blob of the image: its digest, or its size with `size`."""

    which: str  # "layer", "config" or "manifest"
    size: bool = False


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Dup):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    if isinstance(value, bytes):  # a whole document of raw bytes: text_of puts them in
        return ""
    return json.dumps(value, ensure_ascii=False)


def deep(n: int) -> Raw:
    return Raw("[" * n + "]" * n)


HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**63, 2**64 + 1, 10**40,
    Raw("1e999"), Raw("-1e999"), Raw("NaN"), Raw("-0"), Raw("9" * 5000),
    "", "ü✓ ☃", "\x00", "a\nb", "x" * 5000, [], {}, [None], {"a": {"b": []}},
    deep(3), deep(50_000), Raw('{"a":' * 20_000 + "1" + "}" * 20_000),
    ZERO, "sha256:../../../../etc/passwd", "sha512:" + "a" * 128, "SHA256:" + "A" * 64,
    "sha256:" + "a" * 63, "sha256:" + "a" * 64 + "\n",
    MANIFEST, INDEX, CONFIG, GZIP, TAR, "application/x-evil", "text/plain",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    Blob("layer"), Blob("config"), Blob("manifest"),
    Blob("layer", size=True), Blob("config", size=True), Blob("manifest", size=True),
]  # fmt: skip
HOSTILE_KEYS = ["", "ü", "\x00", "mediaType", "manifests", "layers", "config", "size", "x" * 300]


def _paths(doc: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [here]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*here, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*here, i))
    return out


@dataclass(frozen=True)
class Op:
    kind: str  # set, del, add, dup, doc (the whole document), text (edits of its text)
    path: tuple[Any, ...] = ()
    value: Any = None
    key: str = ""
    edits: tuple[tuple[int, str, int], ...] = ()  # (position, inserted, characters cut)


def _holds(doc: Any, key: Any) -> bool:
    if isinstance(doc, dict):
        return key in doc
    return isinstance(doc, list) and isinstance(key, int) and key < len(doc)


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path[:-1]:
        if not _holds(doc, p):
            return None
        doc = doc[p]
    return doc


def apply(doc: Any, ops: list[Op]) -> Any:
    """doc (a fresh copy, JSON-like) with the structural ops applied; text ops are kept."""
    for op in ops:
        if op.kind == "doc":
            doc = copy.deepcopy(op.value)
            continue
        if op.kind == "text":
            continue
        if not op.path:
            if op.kind == "set":
                doc = copy.deepcopy(op.value)
            continue
        parent, last = _parent(doc, op.path), op.path[-1]
        if not _holds(parent, last):
            continue
        if op.kind == "set":
            parent[last] = copy.deepcopy(op.value)
        elif op.kind == "del":
            del parent[last]
        elif op.kind == "add" and isinstance(parent[last], dict):
            parent[last][op.key] = copy.deepcopy(op.value)
        elif op.kind == "dup" and isinstance(parent[last], dict) and parent[last]:
            pairs = tuple(parent[last].items())
            twice = (pairs[0][0], copy.deepcopy(op.value))
            # first: the hostile value comes first and the real one wins; last: it wins
            parent[last] = Dup((twice, *pairs) if op.key == "first" else (*pairs, twice))
    return doc


def text_of(doc: Any, ops: list[Op]) -> bytes:
    text = dump(doc)
    for op in ops:
        if op.kind == "text":
            for pos, ins, cut in op.edits:
                i = pos % (len(text) + 1)
                text = text[:i] + ins + text[i + cut :]
    raw = text.encode("utf-8", "surrogatepass")
    for op in ops:
        if op.kind == "doc" and isinstance(op.value, bytes):
            raw = op.value
    return raw


def _resolve(doc: Any, blobs: dict[str, bytes]) -> Any:
    if isinstance(doc, Blob):
        data = blobs.get(doc.which, b"")
        return len(data) if doc.size else "sha256:" + hashlib.sha256(data).hexdigest()
    if isinstance(doc, dict):
        return {k: _resolve(v, blobs) for k, v in doc.items()}
    if isinstance(doc, Dup):
        return Dup(tuple((k, _resolve(v, blobs)) for k, v in doc.pairs))
    if isinstance(doc, list):
        return [_resolve(v, blobs) for v in doc]
    return doc


# --- the valid image ----------------------------------------------------------------------


def _proto_payload(digest: str) -> dict[str, Any]:
    return json.loads(cosign.payload("127.0.0.1/fuzz", digest, {"a": "b"}))


def _proto_sig_manifest(
    cdigest: str, csize: int, pdigest: str, psize: int, signature: str
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "size": csize, "digest": cdigest},
        "layers": [
            {
                "mediaType": cosign.PAYLOAD_TYPE,
                "size": psize,
                "digest": pdigest,
                "annotations": {cosign.SIGNATURE_ANNOTATION: signature},
            }
        ],
    }


def _proto_statement(digest: str) -> dict[str, Any]:
    return json.loads(bundle.statement(digest, {"a": "b"}))


def _proto_bundle(payload: bytes, signature: bytes) -> dict[str, Any]:
    return {
        "mediaType": bundle.BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "x"}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": bundle.INTOTO_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode()}],
        },
    }


def _proto_referrer(bdigest: str, bsize: int, subject: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(bundle.referrer_manifest(b"", subject, "2024-01-01T00:00:00Z"))
    doc["layers"][0].update(digest=bdigest, size=bsize)
    return doc


def _proto_referrers(rdigest: str, rsize: int) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": MANIFEST, "size": rsize, "digest": rdigest,
             "artifactType": bundle.BUNDLE_TYPE},
        ],
    }  # fmt: skip


def _proto_config() -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": {"org.example": "v"}, "Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [ZERO]},
        "history": [{"created_by": "fuzz"}],
    }


def _proto_manifest() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": ZERO, "size": 1},
        "layers": [{"mediaType": GZIP, "digest": ZERO, "size": 1}],
        "annotations": {"a": "b"},
    }


def _proto_index() -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {
                "mediaType": MANIFEST,
                "digest": ZERO,
                "size": 1,
                "annotations": {REF_NAME: "latest"},
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }


PROTOS = {"config": _proto_config(), "manifest": _proto_manifest(), "index": _proto_index()}


@dataclass
class Signing:
    """Signatures for the image, mutated: a `.sig` manifest and its payload (kind "sig"),
    or a referrers index, a referrer manifest, a bundle and its statement ("bundle").
    What is signed is signed after the mutation, so the parsers behind the signature
    check are reached; "forged" signs with another key."""

    kind: str
    outer: list[Op] = field(default_factory=list)  # .sig manifest / referrers index
    middle: list[Op] = field(default_factory=list)  # payload / referrer manifest
    inner: list[Op] = field(default_factory=list)  # - / bundle
    signed: list[Op] = field(default_factory=list)  # - / statement
    forged: bool = False


@dataclass
class Image:
    """One drawn image: document ops, whether mutated children are re-hashed, the layer."""

    config: list[Op] = field(default_factory=list)
    manifest: list[Op] = field(default_factory=list)
    index: list[Op] = field(default_factory=list)
    rehash: bool = True
    layer: bytes = b""
    gz: bool = True
    signing: Signing | None = None

    def build(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The blobs (by digest) and the documents (layer, config, manifest, index).

        A mutated document is stored under its own digest when rehash is set, else under
        the digest of the document it replaced (its parent's descriptor then lies).
        """
        tar = self.layer or clean_layer()
        docs = {"layer": gzip.compress(tar, mtime=0) if self.gz else tar}
        blobs = {_digest(docs["layer"]): docs["layer"]}

        def store(which: str, proto: Any, ops: list[Op]) -> tuple[str, int]:
            clean = dump(_resolve(proto, docs)).encode()
            docs[which] = text_of(_resolve(apply(proto, ops), docs), ops)
            if self.rehash or not ops:
                clean = docs[which]
            blobs[_digest(clean)] = docs[which]
            return _digest(clean), len(clean)

        config = _proto_config()
        config["rootfs"]["diff_ids"] = [_digest(tar)]
        cdigest, csize = store("config", config, self.config)
        manifest = _proto_manifest()
        manifest["config"].update(digest=cdigest, size=csize)
        manifest["layers"][0].update(
            mediaType=GZIP if self.gz else TAR,
            digest=_digest(docs["layer"]),
            size=len(docs["layer"]),
        )
        mdigest, msize = store("manifest", manifest, self.manifest)
        index = _proto_index()
        index["manifests"][0].update(digest=mdigest, size=msize)
        if self.signing is not None:
            index["manifests"].append(self._sign(store, docs, mdigest, msize))
        store("index", index, self.index)
        return blobs, docs

    def _sign(self, store: Any, docs: dict[str, bytes], mdigest: str, msize: int) -> dict[str, Any]:
        """Store the signature documents; the index.json descriptor that tags them."""
        sig = self.signing
        assert sig is not None
        key = FORGER if sig.forged else KEY
        if sig.kind == "sig":
            pdigest, psize = store("payload", _proto_payload(mdigest), sig.middle)
            signature = base64.b64encode(cosign.sign(key, docs["payload"])).decode()
            config = docs["config"]
            doc = _proto_sig_manifest(_digest(config), len(config), pdigest, psize, signature)
            digest, size = store("sig", doc, sig.outer)
            return {"mediaType": MANIFEST, "digest": digest, "size": size,
                    "annotations": {REF_NAME: cosign.sig_tag(mdigest)}}  # fmt: skip
        store("statement", _proto_statement(mdigest), sig.signed)
        payload = docs["statement"]
        envelope = bundle.pae(bundle.INTOTO_TYPE, payload)
        proto = _proto_bundle(payload, cosign.sign(key, envelope))
        bdigest, bsize = store("bundle", proto, sig.inner)
        subject = {"mediaType": MANIFEST, "digest": mdigest, "size": msize}
        doc = _proto_referrer(bdigest, bsize, subject)
        rdigest, rsize = store("referrer", doc, sig.middle)
        idigest, isize = store("referrers", _proto_referrers(rdigest, rsize), sig.outer)
        return {"mediaType": INDEX, "digest": idigest, "size": isize,
                "annotations": {REF_NAME: referrers.fallback_tag(mdigest)}}  # fmt: skip

    def write_layout(self, where: Path) -> Path:
        blobs, docs = self.build()
        (where / "blobs/sha256").mkdir(parents=True)
        for digest, data in blobs.items():
            (where / "blobs/sha256" / digest.removeprefix("sha256:")).write_bytes(data)
        (where / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (where / "index.json").write_bytes(docs["index"])
        return where


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- strategies ---------------------------------------------------------------------------

_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
VALUE = st.one_of(st.sampled_from(HOSTILE_VALUES), _JSON)
_NOISE = st.sampled_from([*'{}[]:,"\\', "\ud800", "\x00", "\ufeff", "1e999", " "])


@st.composite
def ops(draw: st.DrawFn, proto: Any) -> list[Op]:
    paths = _paths(proto)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "set", "del", "add", "dup", "doc", "text"]))
        path = draw(st.sampled_from(paths))
        if kind == "doc":
            value = draw(
                st.one_of(
                    VALUE,
                    st.binary(max_size=64),
                    st.sampled_from([b"", b"\xef\xbb\xbf{}", "{}".encode("utf-16"), b"\xff\xfe"]),
                )
            )
            out.append(Op("doc", value=value))
        elif kind == "text":
            edit = st.tuples(st.integers(0, 2000), _NOISE | st.just(""), st.integers(0, 4))
            out.append(Op("text", edits=tuple(draw(st.lists(edit, min_size=1, max_size=3)))))
        else:
            key = draw(st.sampled_from(HOSTILE_KEYS)) if kind == "add" else ""
            key = draw(st.sampled_from(["first", "last"])) if kind == "dup" else key
            out.append(Op(kind, path, draw(VALUE), key))
    return out


def _some(proto: Any) -> st.SearchStrategy[list[Op]]:
    return st.one_of(st.just([]), st.just([]), ops(proto))


_SIGNING_PROTOS = {
    "payload": _proto_payload(ZERO),
    "sig": _proto_sig_manifest(ZERO, 1, ZERO, 1, "c2ln"),
    "statement": _proto_statement(ZERO),
    "bundle": _proto_bundle(b"{}", b"s"),
    "referrer": _proto_referrer(ZERO, 1, {"mediaType": MANIFEST, "digest": ZERO, "size": 1}),
    "referrers": _proto_referrers(ZERO, 1),
}


@st.composite
def signings(draw: st.DrawFn) -> Signing:
    p = _SIGNING_PROTOS
    if draw(st.booleans()):
        return Signing(
            "sig",
            outer=draw(_some(p["sig"])),
            middle=draw(_some(p["payload"])),
            forged=draw(st.integers(0, 5)) == 0,
        )
    return Signing(
        "bundle",
        outer=draw(_some(p["referrers"])),
        middle=draw(_some(p["referrer"])),
        inner=draw(_some(p["bundle"])),
        signed=draw(_some(p["statement"])),
        forged=draw(st.integers(0, 5)) == 0,
    )


@st.composite
def images(draw: st.DrawFn) -> Image:
    """An image with at least one mutated document, or signed with mutated signatures."""
    img = Image(
        config=draw(_some(PROTOS["config"])),
        manifest=draw(_some(PROTOS["manifest"])),
        index=draw(_some(PROTOS["index"])),
        rehash=draw(st.sampled_from([True, True, True, False])),
        gz=draw(st.booleans()),
        signing=draw(st.none() | st.none() | signings()),
    )
    if not (img.config or img.manifest or img.index or img.signing):
        img.config = draw(ops(PROTOS["config"]))
    return img


@st.composite
def layer_images(draw: st.DrawFn) -> Image:
    """A valid image document-wise whose one layer carries hostile headers."""
    return Image(layer=draw(layers()), gz=draw(st.booleans()))


def public_key(where: Path) -> Path:
    """KEY's public half as a cosign.pub file."""
    where.write_bytes(cosign.public_pem(KEY))
    return where
