"""Our unpacker and `umoci raw unpack` make the same tree of the vanilla image.

Compared: paths, types, modes, owners, sizes, file contents, symlink targets, device
numbers, xattrs, mtimes and hard-link groups. Both unpack from a private copy of the
layout (blobs hard-linked) that holds only this manifest, so a rebuild of
build/oci:vanilla while the test runs cannot give the two tools different images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cos.oci.unpack import unpack_image
from tests.conftest import need
from tests.support.changeset import changeset_layers
from tests.support.images import LAYOUT
from tests.support.malicious_layers import oci_layout
from tests.support.trees import differences, tree

pytestmark = pytest.mark.integration


def private_layout(src: Path, digest: str, dest: Path, tag: str) -> Path:
    """An OCI layout with one tag, its blobs hard-linked (copied across filesystems)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(d: str) -> Path:
        hexd = d.removeprefix("sha256:")
        try:
            os.link(src / "blobs/sha256" / hexd, blobs / hexd)
        except OSError:
            shutil.copy2(src / "blobs/sha256" / hexd, blobs / hexd)
        return blobs / hexd

    manifest = json.loads(put(digest).read_bytes())
    put(manifest["config"]["digest"])
    for layer in manifest["layers"]:
        put(layer["digest"])
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest.get(
                    "mediaType", "application/vnd.oci.image.manifest.v1+json"
                ),
                "digest": digest,
                "size": (blobs / digest.removeprefix("sha256:")).stat().st_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return dest


def umoci_unpack(layout: Path, tag: str, dest: Path) -> None:
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
        check=True,
        capture_output=True,
        text=True,
    )


def test_unpack_matches_umoci(vanilla: str) -> None:
    need("umoci", root=True)
    work = Path(tempfile.mkdtemp(prefix="cos-unpack-", dir="/var/tmp"))
    try:
        layout = private_layout(LAYOUT, vanilla, work / "oci", "vanilla")
        umoci_unpack(layout, "vanilla", work / "umoci")
        unpack_image(layout, vanilla, work / "cos")
        ours, our_links = tree(work / "cos")
        theirs, their_links = tree(work / "umoci")
        diffs = differences(ours, theirs)
        assert not diffs, f"{len(diffs)} entries differ (cos != umoci):\n" + "\n".join(diffs[:50])
        assert our_links == their_links, f"hard links: cos {our_links} umoci {their_links}"
        assert len(ours) > 10_000  # it was the real image
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_changeset_edge_cases_match_umoci(tmp_path: Path) -> None:
    """Whiteouts, opaque dirs, replacements, links, devices and xattrs, side by side."""
    need("umoci", root=True)
    layout, digest = oci_layout(tmp_path, changeset_layers())
    umoci_unpack(layout, "latest", tmp_path / "umoci")
    unpack_image(layout, digest, tmp_path / "cos")
    ours, our_links = tree(tmp_path / "cos")
    theirs, their_links = tree(tmp_path / "umoci")
    # umoci restores only the whiteout's parent after removing the lower "dir/old", so
    # "dir" keeps the time of the removal; we keep the time of its own entry.
    assert ours.pop("dir")[-1] == 55 * 10**9
    theirs.pop("dir")
    diffs = differences(ours, theirs)
    assert not diffs, "cos != umoci:\n" + "\n".join(diffs)
    assert our_links == their_links == [["bin/ping", "bin/ping2"], ["hsym", "sym"]]
