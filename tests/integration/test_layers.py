"""Sharing snapshots on the host: the stack of layer images shows the tree plain
unpacking makes, entry for entry, and a second snapshot writes only its new layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cos.errors import ImageError
from cos.oci.image import LocalImage
from cos.oci.reference import parse_ref
from cos.oci.unpack import unpack_image
from cos.snapshot.layers import LAYERS_DIR, LayersSnapshotter
from tests.conftest import need
from tests.support.changeset import changeset_layers
from tests.support.device import Device, booted_copy, cos_env, kill_upgrades, partition
from tests.support.images import LAYOUT, derive, push
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
    layers = snaps._layers_of(image, where.parent, where.parent)
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
        snaps._layers_of(_image(layout, "latest", digest), work, work)
    layout, digest = oci_layout(work / "c", changeset_layers())
    with pytest.raises(ImageError, match="passes through a symbolic link"):
        snaps._layers_of(_image(layout, "latest", digest), work, work)
    cross = [Layer().file("a", b"x").bytes(), Layer().hardlink("b", "a").bytes()]
    layout, digest = oci_layout(work / "b", cross)
    with pytest.raises(ImageError, match="not in the same layer"):
        snaps._layers_of(_image(layout, "latest", digest), work, work)
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


# -- on an installed device ------------------------------------------------------------


@dataclass
class Images:
    v1: str
    v2: str


@pytest.fixture(scope="module")
def images(vanilla: str, local_registry: str) -> Images:
    derive("vanilla", "layers-v2", {"/etc/cos-layers-test": "v2\n"}, ("/etc/issue",))
    return Images(
        v1=push("vanilla", local_registry, "cos/layers:v1"),
        v2=push("layers-v2", local_registry, "cos/layers:v2"),
    )


@pytest.fixture(scope="module")
def loop_disk(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Path:
    """A disk installed with loop snapshots (the default before layers)."""
    out = tmp_path_factory.mktemp("loop-disk")
    (out / "etc-cos").mkdir()
    (out / "etc-cos/config.yaml").write_text("snapshotter: loop\n")
    disk = out / "disk.raw"
    argv = [sys.executable, "-m", "cos", "build-disk", images.v1, "-o", str(disk)]
    subprocess.run([*argv, "--tls-verify=false"], check=True, env=cos_env(out / "etc-cos"))
    return disk


def _release(dev: Device) -> None:
    """What a power cut does to mounts: whatever an interrupted build mounted goes."""
    for _ in range(4):
        left = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(f"{dev.run}/")
        ]
        if not left:
            return
        for mnt in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-d", mnt], check=False, capture_output=True)


def _layers(tag: str) -> list[str]:
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{LAYOUT}:{tag}"], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out)["Layers"])


def _layer_blobs(dev: Device) -> set[str]:
    blobs = dev.state / ".store/blobs/sha256"
    return {f"sha256:{b.name}" for b in blobs.iterdir()} if blobs.is_dir() else set()


def _complete(snaps: LayersSnapshotter, n: int) -> None:
    """Snapshot n is whole: every layer it lists is there and matches its sum."""
    d = snaps.root / str(n)
    assert not (d / ".partial").exists(), n
    if not snaps.is_stack(n):
        assert (d / "snapshot.img").is_file(), n
        return
    for layer in snaps.stack(n):
        if layer.parent == snaps.layers_dir:
            assert snaps._intact(layer) is not None, layer
        else:
            assert layer.is_file(), layer
    assert (d / "vmlinuz").stat().st_size > 0 and (d / "initrd").stat().st_size > 0


def test_a_loop_system_moves_to_layers_and_survives_kills(
    loop_disk: Path, images: Images, tmp_path: Path
) -> None:
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    (conf / "config.yaml").write_text("max-snaps: 2\n")  # the default snapshotter: layers
    with booted_copy(loop_disk, tmp_path, conf) as dev:
        try:
            _moves_and_survives(dev, images)
        finally:
            _release(dev)


def _moves_and_survives(dev: Device, images: Images) -> None:
    r = dev.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--disk", str(dev.disk))
    assert "Moving to layers snapshots" in r.stderr, r.stderr
    # v2's own layer went to RAM, never to the store, and the spool is gone.
    assert "fetched into RAM" in r.stderr, r.stderr
    assert not (dev.run / "spool").exists()
    snaps = LayersSnapshotter(dev.state)
    assert snaps.is_stack(2) and not snaps.is_stack(1) and dev.active() == 2
    assert os.readlink(dev.state / ".snapshots/active") == "2"
    status = dev.status()
    assert status["snapshotter"] == "layers"
    sizes = {s["number"]: s["bytes"] for s in status["snapshots"]}
    assert sizes[1] > 500 * 2**20 and sizes[2] > 500 * 2**20  # nothing shared yet
    # The ESP's GRUB menu was rewritten to boot snapshot directories.
    esp = subprocess.run(
        ["mtype", "-i", f"{dev.disk}@@{partition('efi')[0]}", "::/grub/grub.cfg"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    assert '"($1)$2/vmlinuz"' in esp
    # The layers are on the device as layer images now: their compressed blobs are not
    # kept beside them (manifests and configs are).
    assert not _layer_blobs(dev) & set(_layers("layers-v2"))

    # Rollback across kinds: the loop snapshot boots again, as the link says.
    dev.boot("active", 2)
    dev.cos("rollback")
    assert os.readlink(dev.state / ".snapshots/active") == "1/snapshot.img"
    dev.boot("active", 1)

    # Back to v1 as layers: no layer is made (v2's stack holds v1's), and v2's own layer
    # goes with snapshot 2 (max-snaps 2).
    before = set(snaps.layers_dir.glob("*.erofs"))
    r = dev.cos("upgrade", "--system", images.v1, "--tls-verify=false", "--force")
    assert "(0 of " in r.stderr, r.stderr  # every layer is held, v1's config kept
    after = set(snaps.layers_dir.glob("*.erofs"))
    assert after < before and len(before - after) == 1
    assert snaps.numbers() == [1, 3] and dev.active() == 3  # max-snaps 2: 2 pruned
    with snaps.mounted(3, dev.run / "check") as tree:
        assert not (tree / "etc/cos-layers-test").exists() and (tree / "etc/issue").exists()

    # SIGKILL at ≥ 20 random instants: the selection always names whole snapshots.
    dev.boot("active", 3)

    def check(i: int) -> None:
        _complete(snaps, dev.active())
        for n in dev.env().get("passive_snaps", "").split():
            _complete(snaps, int(n))

    kill_upgrades(dev, [images.v1, images.v2], check, _release, seed=20261202)
    dev.boot("active", dev.active())
    dev.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--force")
    assert not list((dev.state / ".snapshots").glob("*/.partial"))
    assert not list(snaps.layers_dir.glob(".tmp-*"))
    assert not (dev.run / "spool").exists()  # a killed run's blobs go with the next one
    assert len(snaps.numbers()) == 2
    # Nothing is kept that no snapshot lists.
    listed = {p for n in snaps.numbers() if snaps.is_stack(n) for p in snaps.stack(n)}
    assert set(snaps.layers_dir.glob("*.erofs")) <= listed
