"""Sharing snapshots on the host: the stack of layer images shows the tree plain
unpacking makes, entry for entry, and a second snapshot writes only its new layer."""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.errors import ImageError
from cos.oci.image import LocalImage
from cos.oci.reference import parse_ref
from cos.oci.unpack import unpack_image
from cos.snapshot.layers import LAYERS_DIR, LayersSnapshotter
from tests.conftest import need
from tests.support.changeset import changeset_layers
from tests.support.images import LAYOUT, derive
from tests.support.malicious_layers import Layer, oci_layout
from tests.support.trees import Entry, differences, tree

pytestmark = pytest.mark.integration


@pytest.fixture
def work() -> Iterator[Path]:
    need("mkfs.erofs", root=True)
    d = Path(tempfile.mkdtemp(prefix="cos-layers-", dir="/var/tmp"))
    yield d
    os.system(f"umount -R {d}/* 2>/dev/null; rm -rf {d}")


def _image(layout: Path, tag: str, digest: str) -> LocalImage:
    return LocalImage(parse_ref(f"oci:{layout}:{tag}"), layout, tag, digest)


def _stack_tree(
    snaps: LayersSnapshotter, image: LocalImage, where: Path
) -> tuple[dict[str, Entry], list[list[str]]]:
    """The stack of image's layers (plus an empty top) as the initrd would mount it."""
    layers = snaps._layers_of(image, where.parent)
    top = where.parent / "top"
    top.mkdir()
    from cos.snapshot.layers import _set_root, mkfs_erofs

    _set_root(top, [r for _, r in layers])
    mkfs_erofs(where.parent / "top.erofs", top)
    stack = [where.parent / "top.erofs", *(p for p, _ in reversed(layers))]
    with snaps._stack_mounted(stack, where) as mnt:
        return tree(mnt)


def test_changeset_corpus_stacks_like_unpacking(work: Path) -> None:
    layout, digest = oci_layout(work, changeset_layers(through_symlink=False))
    unpack_image(layout, digest, work / "plain")
    snaps = LayersSnapshotter(work / "state")
    ours, our_links = _stack_tree(snaps, _image(layout, "latest", digest), work / "stack")
    theirs, their_links = tree(work / "plain")
    diffs = differences(ours, theirs)
    assert not diffs, "stack != unpack:\n" + "\n".join(diffs)
    assert our_links == their_links


def test_layers_a_stack_cannot_hold_are_refused(work: Path) -> None:
    chr00 = Layer().dir("dev").add("dev/x", tarfile.CHRTYPE, mode=0o600, dev=(0, 0)).bytes()
    layout, digest = oci_layout(work / "a", [chr00])
    snaps = LayersSnapshotter(work / "state")
    with pytest.raises(ImageError, match="character device 0/0"):
        snaps._layers_of(_image(layout, "latest", digest), work)
    layout, digest = oci_layout(work / "c", changeset_layers())
    with pytest.raises(ImageError, match="passes through a symbolic link"):
        snaps._layers_of(_image(layout, "latest", digest), work)
    cross = [Layer().file("a", b"x").bytes(), Layer().hardlink("b", "a").bytes()]
    layout, digest = oci_layout(work / "b", cross)
    with pytest.raises(ImageError, match="not in the same layer"):
        snaps._layers_of(_image(layout, "latest", digest), work)
    assert not [p for p in (work / "state/.snapshots" / LAYERS_DIR).iterdir() if "tmp" in p.name]


def test_vanilla_snapshots_share_layers(vanilla: str, work: Path) -> None:
    # One layer more; it also deletes a file of vanilla (an OCI whiteout).
    v2 = derive("vanilla", "layers-v2", {"/etc/cos-layers-test": "v2\n"}, ("/etc/issue",))
    snaps = LayersSnapshotter(work / "state")
    one = _image(LAYOUT, "vanilla", vanilla)
    with snaps.start(one, 0, work / "build") as p:
        (p.tree / "etc/made-by-hook").write_text("hook\n")
        os.unlink(p.tree / "etc/hostname")
    assert snaps.numbers() == [1]
    store = work / "state/.snapshots" / LAYERS_DIR
    first = {f.name for f in store.glob("*.erofs")}
    with snaps.start(_image(LAYOUT, "layers-v2", v2), 0, work / "build") as p:
        assert (p.tree / "etc/cos-layers-test").read_text() == "v2\n"
        assert not (p.tree / "etc/issue").exists()
    added = {f.name for f in store.glob("*.erofs")} - first
    assert len(added) == 1, added

    unpack_image(LAYOUT, vanilla, work / "plain")
    (work / "plain/etc/made-by-hook").write_text("hook\n")
    os.unlink(work / "plain/etc/hostname")
    with snaps.mounted(1, work / "mnt") as mnt:
        ours, our_links = tree(mnt)
        assert (mnt / "etc/made-by-hook").read_text() == "hook\n"
    theirs, their_links = tree(work / "plain")
    theirs.pop("etc")  # the hook changed it now: its mtime differs by construction
    ours.pop("etc")
    theirs.pop("etc/made-by-hook")
    ours.pop("etc/made-by-hook")
    diffs = differences(ours, theirs)
    assert not diffs, f"{len(diffs)} entries differ:\n" + "\n".join(diffs[:40])
    assert our_links == their_links
    assert len(ours) > 10_000

    # Snapshot 1 goes: the layers snapshot 2 shares stay, 1's own top goes with it.
    assert snaps.size(1) < snaps.size(2)
    snaps._link(2)
    snaps.delete(1)
    assert {f.name for f in store.glob("*.erofs")} == first | added
