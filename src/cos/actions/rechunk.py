"""cos rechunk: rewrite an image into layers that change only where its packages change.

The source is flattened with cos's unpacker (whiteouts resolved, every digest
checked), regrouped (cos.oci.chunks), written (cos.oci.tarwriter), and the result is
unpacked again and compared with the source, path by path, before anything reaches
DEST: an image that would not boot the same system is never written. DEST is written
by skopeo from a private layout, so every destination skopeo knows works the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.config import Config
from cos.errors import ConfigError, ImageError, ToolError, UsageError
from cos.log import log, step
from cos.oci.digest import short_digest
from cos.oci.layout import OciLayout
from cos.oci.rechunk import created_ns, grouping, platform_manifest, rechunk_tree
from cos.oci.reference import ImageRef, Transport, parse_ref
from cos.oci.store import fetch, inspect_remote
from cos.oci.tarwriter import Mtimes, differences, fingerprint
from cos.oci.unpack import unpack_image

DEFAULT_MAX_LAYERS = 64
_TAG = "rechunked"


@dataclass(frozen=True)
class RechunkRequest:
    source: str
    dest: str
    max_layers: int = DEFAULT_MAX_LAYERS
    prev: str | None = None


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH as the mtime clamp (None when unset)."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(
            f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds",
            hint="set it to a Unix time, e.g. $(git log -1 --format=%ct)",
        )
    return int(text)


def _image(ref: ImageRef, cfg: Config) -> tuple[OciLayout, str]:
    """The layout holding ref and its platform manifest digest (fetched if remote)."""
    local = fetch(ref, Path(cfg.cache_dir), cfg.tls_verify, cfg.signature_key(), cfg.arch())
    layout = OciLayout(local.layout)
    return layout, platform_manifest(layout, local.digest, cfg.arch(), str(ref))


def previous_grouping(text: str, cfg: Config) -> list[list[str]]:
    """The grouping of the release before (only its manifest is read from a registry)."""
    ref = parse_ref(text)
    if ref.transport == Transport.DIR:
        raise UsageError(f"--prev {ref}: a tree has no layers", hint="pass the previous image")
    if ref.transport == Transport.DOCKER:
        remote = inspect_remote(ref, cfg.tls_verify, cfg.arch())
        manifest = json.loads(remote.manifest)
    else:
        layout, digest = _image(ref, cfg)
        manifest = layout.read_json(digest, "manifest")
    return grouping(manifest, f"--prev {ref}")


def _source_config(layout: OciLayout, digest: str) -> tuple[dict[str, Any], dict[str, str]]:
    manifest = layout.read_json(digest, "manifest")
    desc = manifest.get("config") or {}
    config = layout.read_json(str(desc.get("digest")), "config", desc.get("size"))
    notes = manifest.get("annotations")
    return config, notes if isinstance(notes, dict) else {}


def _tree_config(cfg: Config) -> dict[str, Any]:
    return {"architecture": cfg.arch(), "os": "linux", "config": {}}


def _push(out: Path, dest: ImageRef, cfg: Config) -> None:
    argv = ["skopeo", "copy", "--quiet", "--preserve-digests"]
    if dest.transport == Transport.DOCKER and not cfg.tls_verify:
        argv.append("--dest-tls-verify=false")
    argv += [f"oci:{out}:{_TAG}", dest.skopeo]
    try:
        runner.run(argv)
    except ToolError as exc:
        raise ImageError(
            f"writing {dest} failed: {(exc.stderr.strip().splitlines() or [str(exc)])[-1]}",
            hint="check that DEST is writable (and the registry reachable, logged in)",
        ) from exc


def rechunk_image(req: RechunkRequest, cfg: Config) -> str:
    """Write SOURCE's tree as a rechunked image to DEST; returns its manifest digest."""
    if req.max_layers < 1:
        raise UsageError(f"--max-layers {req.max_layers}: at least 1 layer", hint="e.g. 64")
    source = parse_ref(req.source)
    dest = parse_ref(req.dest)
    if dest.transport == Transport.DIR:
        raise UsageError(
            f"DEST {dest} is a tree, not an image",
            hint="write to oci:DIR[:TAG], oci-archive:FILE[:TAG] or host/repo:tag",
        )
    clamp = source_date_epoch()
    prev = previous_grouping(req.prev, cfg) if req.prev else None
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cos-rechunk-", dir=cache))
    notes: dict[str, str] = {}
    unpacked_at: int | None = None
    try:
        if source.transport == Transport.DIR:
            tree, config = Path(source.name), _tree_config(cfg)
            if not tree.is_dir():
                raise ImageError(f"{source}: {tree} is not a directory", hint="check the path")
        else:
            with step(f"Reading {source}"):
                layout, digest = _image(source, cfg)
                config, notes = _source_config(layout, digest)
                tree = work / "source"
                unpacked_at = time.time_ns() - 1_000_000_000  # file times lag the clock
                unpack_image(layout.root, digest, tree)
        out = work / "oci"
        stand_in = clamp * 1_000_000_000 if clamp is not None else created_ns(config)
        times = Mtimes(clamp, unpacked_at, stand_in)
        with step("Writing the layers"):
            result = rechunk_tree(tree, config, out, _TAG, req.max_layers, prev, times, notes)
        with step("Checking that the new image unpacks to the same tree"):
            check = work / "check"
            unpack_image(out, result.digest, check)
            if clamp is not None:
                log.info("mtimes after SOURCE_DATE_EPOCH=%d are clamped to it", clamp)
            diff = differences(fingerprint(tree, times), fingerprint(check))
            if diff:
                raise ImageError(
                    f"the rechunked image differs from {source}: {'; '.join(diff)}",
                    hint="nothing was written; report this with the image",
                )
        with step(f"Writing {dest}"):
            _push(out, dest, cfg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(x.size for x in result.layers)
    log.info(
        "%s: %d layers, %.1f MiB, %s",
        dest,
        len(result.layers),
        size / 1048576,
        short_digest(result.digest),
    )
    print(result.digest)
    return result.digest
