"""An image rewritten from its flattened tree into content-stable layers.

The tree (every layer applied by cos's own unpacker) is grouped by cos.oci.chunks,
each layer written by cos.oci.tarwriter, and the image is completed from the source
config: entrypoint, env, labels and the rest carried over, diff_ids recomputed, the
source history kept (as empty-layer entries: its layers are gone) and one entry per
new layer added. Each layer names its groups in the annotation PACKAGES, which is
how the next release finds this one's grouping (`--prev`).
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos.errors import ImageError
from cos.log import log
from cos.oci import chunks
from cos.oci.digest import blob_path, sha256_digest
from cos.oci.layout import INDEX_TYPES, REF_NAME, OciLayout
from cos.oci.tarwriter import Layer, Mtimes, walk, write_layer

PACKAGES = "org.cos.rechunk.packages"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
_COMMENT_GROUPS = 8


@dataclass(frozen=True)
class Rechunked:
    digest: str  # manifest digest
    layers: tuple[Layer, ...]
    packages: int  # groups that are packages (0: the image has no dpkg data)


def platform_manifest(layout: OciLayout, digest: str, arch: str, what: str) -> str:
    """digest itself for a manifest; for an image index, its linux/arch manifest."""
    doc = layout.read_json(digest, "manifest")
    if doc.get("mediaType") not in INDEX_TYPES and "manifests" not in doc:
        return digest
    for m in doc.get("manifests") or []:
        p = m.get("platform") if isinstance(m, dict) else None
        if isinstance(p, dict) and p.get("os") == "linux" and p.get("architecture") == arch:
            return str(m.get("digest"))
    raise ImageError(
        f"image {what} has no linux/{arch} variant",
        hint="pass --platform OS/ARCH to pick another variant",
    )


def grouping(manifest: Mapping[str, Any], what: str) -> list[list[str]]:
    """The groups of each layer of a manifest this module wrote (for `--prev`)."""
    out = []
    for i, desc in enumerate(manifest.get("layers") or [], 1):
        note = (desc.get("annotations") or {}).get(PACKAGES) if isinstance(desc, dict) else None
        if not isinstance(note, str):
            raise ImageError(
                f"{what}: layer {i} has no {PACKAGES} annotation (not made by cos rechunk)",
                hint="pass as --prev the previous release as cos rechunk wrote it",
            )
        out.append([g for g in note.split(",") if g and g != chunks.DIRS])
    return out


def _scan(tree: Path) -> tuple[dict[str, os.stat_result], list[chunks.File]]:
    stats = dict(walk(tree))
    files = [
        chunks.File(p, st.st_size, (st.st_dev, st.st_ino) if st.st_nlink > 1 else None)
        for p, st in stats.items()
        if not stat.S_ISDIR(st.st_mode)
    ]
    return stats, files


def _created(config: Mapping[str, Any], clamp: int | None) -> str | None:
    """The config's creation time: SOURCE_DATE_EPOCH when given, else the source's."""
    if clamp is not None:
        return datetime.datetime.fromtimestamp(clamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    created = config.get("created")
    return created if isinstance(created, str) else None


def _config(source: Mapping[str, Any], layers: Sequence[Layer], clamp: int | None) -> bytes:
    config = dict(source)
    created = _created(source, clamp)
    history = [
        {**h, "empty_layer": True} for h in source.get("history") or [] if isinstance(h, dict)
    ]
    for layer in layers:
        shown = list(layer.groups[:_COMMENT_GROUPS]) + (
            ["…"] if len(layer.groups) > _COMMENT_GROUPS else []
        )
        entry: dict[str, Any] = {"created_by": "cos rechunk", "comment": ", ".join(shown)}
        if created:
            entry = {"created": created, **entry}
        history.append(entry)
    config["history"] = history
    config["rootfs"] = {"type": "layers", "diff_ids": [x.diff_id for x in layers]}
    if created:
        config["created"] = created
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode()


def _write_json(out: Path, raw: bytes) -> str:
    digest = sha256_digest(raw)
    path = blob_path(out, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return digest


def rechunk_tree(
    tree: Path,
    source_config: Mapping[str, Any],
    out: Path,
    tag: str,
    max_layers: int,
    prev: Sequence[Sequence[str]] | None = None,
    times: Mtimes | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Rechunked:
    """Write the image of tree into a new OCI layout out (tagged tag)."""
    times = times or Mtimes()
    stats, files = _scan(tree)
    owners = chunks.dpkg_owners(tree)
    if owners is None:
        log.info("No dpkg database in the image: files are grouped by path only")
    groups = chunks.group_files(files, owners)
    dirs = [p for p, st in stats.items() if stat.S_ISDIR(st.st_mode)]
    sizes = {g.name: g.size for g in groups.values()}
    sizes[chunks.DIRS] = len(dirs) * chunks.ENTRY_OVERHEAD
    members = {g.name: g.paths for g in groups.values()} | {chunks.DIRS: dirs}
    layout = chunks.plan(sizes, max_layers, prev)
    packages = sum(1 for g in groups if not chunks.is_path_group(g))
    log.info(
        "%d files and %d directories in %d groups (%d packages) → %d layers",
        len(files),
        len(dirs),
        len(sizes),
        packages,
        len(layout),
    )
    jobs = sorted(range(len(layout)), key=lambda i: -sum(sizes[g] for g in layout[i]))
    written: dict[int, Layer] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = {
            i: pool.submit(
                write_layer,
                tree,
                [(p, stats[p]) for g in layout[i] for p in members[g]],
                out,
                layout[i],
                times,
            )
            for i in jobs
        }
        for i, fut in futures.items():
            written[i] = fut.result()
    layers = tuple(written[i] for i in range(len(layout)))
    config = _config(source_config, layers, times.clamp)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": _write_json(out, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": LAYER_TYPE,
                "digest": x.digest,
                "size": x.size,
                "annotations": {PACKAGES: ",".join(x.groups)},
            }
            for x in layers
        ],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    raw = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode()
    digest = _write_json(out, raw)
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": digest,
                "size": len(raw),
                "annotations": {REF_NAME: tag},
            }
        ],
    }
    (out / "index.json").write_text(json.dumps(index, separators=(",", ":")))
    return Rechunked(digest, layers, packages)


def created_ns(config: Mapping[str, Any]) -> int:
    """The config's `created` in ns (0 when it has none or it does not parse)."""
    text = config.get("created")
    if not isinstance(text, str):
        return 0
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp()) * 1_000_000_000
