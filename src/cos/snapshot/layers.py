"""Sharing snapshots: each image layer once on COS_STATE, stacked by overlayfs at boot.

Layout under .snapshots/ (the loop backend's files are read too, so a system
installed with loop snapshots upgrades into this one and keeps booting the old ones):

    .layers/<diff_id hex>.erofs   one OCI layer as a read-only erofs image, whiteouts in
                                  overlayfs form (cos.oci.overlayform); shared by every
                                  snapshot whose image has that layer
    .layers/<diff_id hex>.json    its sha256 (checked before a new snapshot reuses it) and
                                  the layer's root entry
    .layers/boot-<sha256>         kernels and initrds, hard-linked into the snapshots
    N/layers                      what the initrd stacks, top first: N/top.erofs, then the
                                  image's layers from the last to the first
    N/top.erofs                   what this snapshot adds on top of its image: the hooks'
                                  changes (an overlayfs upper dir) and the root's attributes
    N/vmlinuz, N/initrd           read by GRUB as plain files
    N/bootargs.cfg                the image's kernel command line for GRUB
    N/.partial                    present while N is built or deleted: debris

Why this shape: building snapshot N+1 writes only the layers N does not have plus a
small top layer; the switch stays the one `active` link renamed (here to `N`). A layer
image is written beside its final name, fsynced, described, then renamed, so a crash
leaves a complete layer or a temporary file that the next build removes. Layers no
snapshot lists are removed after a snapshot is deleted.

The stack is read-only overlayfs with lower layers only; the layout's /etc and /var
overlays stack once more on top of it (overlayfs allows that depth of two), which is
why container runtimes get plain binds from COS_PERSISTENT (layout.persistent-bind).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from cos import run as runner
from cos.config import Filesystem, SnapshotterKind
from cos.disk.mount import mounted
from cos.disk.plan import MIB
from cos.errors import ImageError, StateError
from cos.fsutil import atomic_symlink, atomic_write, ceil_div, fsync_dir, fsync_path, ram_room
from cos.log import log, step
from cos.oci.digest import short_digest
from cos.oci.image import LocalImage
from cos.oci.layout import LayerBlob, OciLayout
from cos.oci.overlayform import OPAQUE_XATTR, RootEntry, adopt_lower, unpack_layer
from cos.oci.reference import Transport
from cos.oci.store import LayerStore
from cos.snapshot.base import BootLocation, Pending, is_number
from cos.snapshot.loop import IMAGE_NAME, PARTIAL, LoopSnapshotter
from cos.system.kernel import check_bootable

LAYERS_DIR = ".layers"
STACK = "layers"
TOP = "top.erofs"
BOOT_FILES = ("vmlinuz", "initrd")
BOOTARGS = "bootargs.cfg"
_TMP = ".tmp-"
# Room a layer needs beyond its tar stream as an erofs image, and the boot files.
_OVERHEAD = 1.05
_BOOT_ROOM = 160 * MIB
_RAM_SLACK = 64 * MIB  # left to everything else when a layer is unpacked in RAM
# Overlayfs options for the stack a snapshot is built in: no extra metadata in the upper
# dir beyond whiteouts and opaque markers, which are all a lower layer may carry.
_BUILD_OPTS = "redirect_dir=off,index=off,metacopy=off,xino=off"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def mkfs_erofs(image: Path, tree: Path) -> None:
    """An uncompressed erofs image of tree: fast to make and to read; the registry's
    blobs are the compressed copy."""
    argv = ["mkfs.erofs", "--quiet", "--preserve-mtime"]
    if not _has_xattrs(tree):
        argv += ["-x", "-1"]  # else mkfs.erofs fails on the first llistxattr
    runner.run([*argv, str(image), str(tree)])


def _has_xattrs(tree: Path) -> bool:
    """Whether tree's filesystem keeps extended attributes at all (a squashfs made or
    mounted without them does not: it has none to lose)."""
    try:
        os.listxattr(tree, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            return False
        raise
    return True


class LayersSnapshotter(LoopSnapshotter):
    """Snapshots as stacks of shared layer images (and older loop images, read as such)."""

    kind = SnapshotterKind.LAYERS
    tools = ("mkfs.erofs",)

    def __init__(self, state_dir: Path, fs: Filesystem = Filesystem.EXT4):
        super().__init__(state_dir, fs)
        self._checked: dict[tuple[str, int, int, int], str] = {}  # image → sum seen whole

    @property
    def layers_dir(self) -> Path:
        return self.root / LAYERS_DIR

    def is_stack(self, n: int) -> bool:
        return (self.root / str(n) / STACK).is_file()

    # -- what is there ----------------------------------------------------------------
    def check(self) -> None:
        super().check()
        d = self.layers_dir
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            raise StateError(
                f"{d}: not a directory",
                hint=f"move {d} aside; cos upgrade --force rebuilds the snapshots",
            )

    def numbers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for d in self.root.iterdir():
            if not is_number(d.name) or (d / PARTIAL).exists():
                continue
            if (d / IMAGE_NAME).is_file() or (d / STACK).is_file():
                out.append(int(d.name))
        return sorted(out)

    def stack(self, n: int) -> list[Path]:
        """Snapshot n's layer images, top first."""
        text = (self.root / str(n) / STACK).read_text()
        out = []
        for line in text.splitlines():
            path = self.root / line
            if not line or line.startswith("/") or ".." in Path(line).parts:
                raise StateError(f"snapshot {n}: bad layer entry {line!r}", hint="remove it")
            out.append(path)
        return out

    def size(self, n: int) -> int:
        """Bytes only n holds: its own files and the layers no other snapshot lists."""
        if not self.is_stack(n):
            return super().size(n)
        others = {p for k in self.numbers() if k != n and self.is_stack(k) for p in self.stack(k)}
        total = sum(p.stat().st_blocks * 512 for p in self.stack(n) if p not in others)
        d = self.root / str(n)
        for f in d.iterdir():
            st = f.lstat()
            # A boot file is n's alone when only n and the store link it.
            if stat.S_ISREG(st.st_mode) and (f.name not in BOOT_FILES or st.st_nlink <= 2):
                total += st.st_blocks * 512
        return total

    def total_bytes(self) -> int:
        seen: set[int] = set()
        total = sum(LoopSnapshotter.size(self, n) for n in self.numbers() if not self.is_stack(n))
        stacks = [self.root / str(n) for n in self.numbers() if self.is_stack(n)]
        for d in [self.layers_dir, *stacks]:
            for f in d.iterdir() if d.is_dir() else []:
                st = f.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_blocks * 512
        return total

    def boot_files(self, n: int) -> BootLocation:
        if not self.is_stack(n):
            return super().boot_files(n)
        return BootLocation(image=f"{self.root.name}/{n}", kernel="/vmlinuz", initrd="/initrd")

    def mounted(self, n: int, where: Path) -> AbstractContextManager[Path]:
        if not self.is_stack(n):
            return super().mounted(n, where)
        return self._stack_mounted(self.stack(n), where)

    @contextmanager
    def _stack_mounted(
        self, layers: Sequence[Path], where: Path, upper: Path | None = None
    ) -> Iterator[Path]:
        """layers (top first) stacked read-only at where, or writable into upper."""
        if upper is None and len(layers) == 1:  # overlayfs stacks two or more
            with mounted(layers[0], where, "loop,ro", "erofs") as mnt:
                yield mnt
            return
        base = where.parent / f".{where.name}-layers"
        with ExitStack() as stack:
            lowers = []
            for i, image in enumerate(layers):
                if not image.is_file():
                    raise StateError(
                        f"layer image {image} is missing",
                        hint="cos upgrade --force rebuilds the snapshot from the registry",
                    )
                lowers.append(
                    str(stack.enter_context(mounted(image, base / str(i), "loop,ro", "erofs")))
                )
            opts = f"lowerdir={':'.join(lowers)}"
            if upper is None:
                opts = f"ro,{opts}"
            else:
                (upper.parent / "work").mkdir(exist_ok=True)
                opts += f",upperdir={upper},workdir={upper.parent / 'work'},{_BUILD_OPTS}"
            yield stack.enter_context(mounted("cos-stack", where, opts, "overlay"))
        shutil.rmtree(base, ignore_errors=True)

    # -- making and removing -------------------------------------------------------------
    def estimate(self, tar_bytes: int) -> int:
        return ceil_div(int(tar_bytes * _OVERHEAD) + _BOOT_ROOM, MIB) * MIB

    def new_bytes(self, layers: Sequence[tuple[str | None, int]]) -> int:
        new = [n for d, n in layers if d is None or not self.has_layer(d)]
        # Each new layer is unpacked on COS_STATE before its image is made; one at a time.
        return self.estimate(sum(new) + max(new, default=0))

    def has_layer(self, diff_id: str) -> bool:
        return self._layer_meta(self._layer_image(diff_id)).is_file()

    def intact_layers(self, diff_ids: Sequence[str | None]) -> set[str]:
        return {
            d
            for d in diff_ids
            if d is not None and self.has_layer(d) and self._intact(self._layer_image(d))
        }

    def _layer_image(self, diff_id: str) -> Path:
        return self.layers_dir / f"{diff_id.removeprefix('sha256:')}.erofs"

    def _layer_meta(self, image: Path) -> Path:
        return image.with_suffix(".json")

    def _intact(self, image: Path) -> dict[str, object] | None:
        """The layer's description when its image is whole (checked byte for byte, once
        per run: the pre-pull check and the build read the same file)."""
        try:
            meta = json.loads(self._layer_meta(image).read_text())
            st = image.stat()
        except (OSError, ValueError):
            return None
        key = (str(image), st.st_ino, st.st_size, st.st_mtime_ns)
        if not isinstance(meta, dict):
            return None
        if self._checked.get(key) != meta.get("sha256"):
            if meta.get("sha256") != _sha256(image):
                return None
            self._checked[key] = str(meta["sha256"])
        return meta

    def _make_layer(
        self, layer: LayerBlob, stage: Path, mounts: Path, below: Sequence[Path]
    ) -> dict[str, object]:
        """One layer as an erofs image in the shared store, made durable before it is
        named. below: the layer images under it, top first. The layer is unpacked in
        stage (_unpack_dir); mount points go in mounts."""
        assert layer.diff_id is not None
        final = self._layer_image(layer.diff_id)
        tmp = final.with_name(_TMP + final.name)
        tree = stage / f"layer-{final.stem[:16]}"
        shutil.rmtree(tree, ignore_errors=True)
        try:
            made = unpack_layer(layer, tree)
            root = made.root
            if made.implicit and below:
                with self._stack_mounted(below, mounts / "below") as lower:
                    adopt_lower(tree, lower, made.implicit, layer.label)
            tmp.unlink(missing_ok=True)
            mkfs_erofs(tmp, tree)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        fsync_path(tmp)
        meta: dict[str, object] = {"sha256": _sha256(tmp), "root": _root_json(root)}
        atomic_write(self._layer_meta(final), json.dumps(meta))
        os.rename(tmp, final)
        fsync_dir(self.layers_dir)
        return meta

    def _layers_of(
        self, image: LocalImage, stage: Path, mounts: Path
    ) -> list[tuple[Path, RootEntry | None]]:
        """The image's layers in the store, base first: made where missing, checked where
        present (a damaged one is made again from its blob)."""
        blobs = OciLayout(image.layout, spool=image.spool).image_layers(image.digest)
        store = LayerStore(image.layout, image.spool)
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        out: list[tuple[Path, RootEntry | None]] = []
        for i, layer in enumerate(blobs, 1):
            if layer.diff_id is None:
                raise ImageError(f"{layer.label} has no diff_id", hint="rebuild the image")
            final = self._layer_image(layer.diff_id)
            meta = self._intact(final) if final.exists() else None
            if meta is None:
                if final.exists():
                    log.warning(
                        "layer image %s is damaged (its content does not match its sum);"
                        " it is made again",
                        final.name,
                    )
                below = [p for p, _ in reversed(out)]
                where = _unpack_dir(store, layer, mounts / "unpack", stage)
                with step(f"Unpacking layer {i}/{len(blobs)} ({short_digest(layer.diff_id)})"):
                    meta = self._make_layer(layer, where, mounts, below)
            out.append((final, _root_from(meta.get("root"))))
        return out

    def _tree_layer(self, tree: Path) -> tuple[Path, RootEntry]:
        """A plain tree (build-disk's, a recovery system's) as one layer of its own."""
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.layers_dir / f"{_TMP}tree-{os.getpid()}.erofs"
        tmp.unlink(missing_ok=True)
        mkfs_erofs(tmp, tree)
        fsync_path(tmp)
        digest = _sha256(tmp)
        final = self.layers_dir / f"tree-{digest}.erofs"
        st = os.lstat(tree)
        root = RootEntry(
            st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns
        )
        atomic_write(
            self._layer_meta(final), json.dumps({"sha256": digest, "root": _root_json(root)})
        )
        os.rename(tmp, final)
        fsync_dir(self.layers_dir)
        return final, root

    @contextmanager
    def start(self, image: LocalImage, size: int, workdir: Path) -> Iterator[Pending]:
        n = self.next_number()
        d = self._begin(n)
        workdir.mkdir(parents=True, exist_ok=True)
        # What the build writes (unpacked layers, the hooks' upper dir) lives on
        # COS_STATE beside the layer images; workdir holds only mount points.
        stage = self.layers_dir / f"{_TMP}build-{n}"
        upper = stage / "upper"
        try:
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir(parents=True)
            layers: list[tuple[Path, RootEntry | None]]
            if image.ref.transport == Transport.DIR:
                with step(f"Making a layer of {image.ref}"):
                    layers = [self._tree_layer(image.layout)]
            else:
                layers = self._layers_of(image, stage, workdir)
            upper.mkdir(mode=0o755)
            _set_root(upper, [r for _, r in layers])
            stack = [p for p, _ in reversed(layers)]
            with self._stack_mounted(stack, workdir / "tree", upper) as tree:
                yield Pending(n, tree)
                self._copy_boot_files(tree, d)
            self._seal_stack(n, d, upper, stack)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def from_tree(self, tree: Path) -> int:
        """A finished tree (build-disk) as one layer of its own."""
        n = self.next_number()
        d = self._begin(n)
        try:
            final, root = self._tree_layer(tree)
            upper = d / ".top"
            upper.mkdir()
            _set_root(upper, [root])
            self._copy_boot_files(tree, d)
            self._seal_stack(n, d, upper, [final])
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        return n

    def _copy_boot_files(self, tree: Path, d: Path) -> None:
        """Kernel and initrd as plain files for GRUB, one copy per content."""
        boot = check_bootable(tree, f"snapshot {d.name}")
        for name, src in (("vmlinuz", boot.vmlinuz), ("initrd", boot.initrd)):
            with open(src, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            kept = self.layers_dir / f"boot-{digest}"
            if not kept.is_file() or kept.stat().st_size != src.stat().st_size:
                tmp = kept.with_name(_TMP + kept.name)
                shutil.copyfile(src, tmp)
                fsync_path(tmp)
                os.rename(tmp, kept)
            os.link(kept, d / name)
        if boot.bootargs is not None:
            shutil.copyfile(boot.bootargs, d / BOOTARGS)

    def _seal_stack(self, n: int, d: Path, upper: Path, stack: Sequence[Path]) -> None:
        """The top layer from upper, the stack list, all durable, then n is complete."""
        _strip_overlay_metadata(upper)
        mkfs_erofs(d / TOP, upper)
        names = [f"{n}/{TOP}", *(str(p.relative_to(self.root)) for p in stack)]
        atomic_write(d / STACK, "".join(f"{x}\n" for x in names))
        for f in d.iterdir():
            if f.is_file():
                fsync_path(f)
        shutil.rmtree(upper, ignore_errors=True)
        fsync_dir(self.layers_dir)
        self._commit(d)

    def _link(self, n: int) -> None:
        if not self.is_stack(n):
            super()._link(n)
            return
        atomic_symlink(str(n), self.root / "active")

    def delete(self, n: int) -> None:
        super().delete(n)
        self.collect()

    def clean_debris(self) -> list[int]:
        removed = super().clean_debris()
        for f in self.layers_dir.iterdir() if self.layers_dir.is_dir() else []:
            if f.name.startswith(_TMP):
                if f.is_dir() and not f.is_symlink():
                    shutil.rmtree(f)
                else:
                    f.unlink()
        self.collect()
        return removed

    def collect(self) -> int:
        """Remove layer images and boot files no snapshot uses; returns the bytes freed."""
        if not self.layers_dir.is_dir():
            return 0
        used: set[str] = set()
        for d in self.root.iterdir():
            if is_number(d.name) and (d / STACK).is_file():
                used.update(p.name for p in self.stack(int(d.name)))
        freed = 0
        for f in sorted(self.layers_dir.iterdir()):
            try:
                st = f.lstat()
            except FileNotFoundError:
                continue  # a layer's description, gone with its image
            if f.suffix == ".erofs" and f.name not in used:
                freed += st.st_blocks * 512
                self._layer_meta(f).unlink(missing_ok=True)
                f.unlink()
            elif f.suffix == ".json" and not f.with_suffix(".erofs").exists():
                f.unlink()
            elif f.name.startswith("boot-") and st.st_nlink == 1:
                freed += st.st_blocks * 512
                f.unlink()
        fsync_dir(self.layers_dir)
        return freed


def _unpack_dir(store: LayerStore, layer: LayerBlob, ram: Path, disk: Path) -> Path:
    """Where a layer is unpacked before its image is made: in RAM (the run directory)
    when four times its tar stream fits there (tmpfs gives each small file a page), so
    the tree never reaches the device; else on COS_STATE, where the pre-flight counted
    it (a live or recovery system's /run is small). Only for a size counted before:
    counting it now would read the whole blob once more."""
    size = store.known_tar_size(layer.digest) if layer.digest else None
    if size is not None and 4 * size + _RAM_SLACK <= ram_room(ram.parent):
        ram.mkdir(exist_ok=True)
        return ram
    return disk


def _root_json(root: RootEntry | None) -> dict[str, int] | None:
    if root is None:
        return None
    return {
        "uid": root.uid,
        "gid": root.gid,
        "mode": root.mode,
        "atime_ns": root.atime_ns,
        "mtime_ns": root.mtime_ns,
    }


def _root_from(data: object) -> RootEntry | None:
    if not isinstance(data, dict):
        return None
    try:
        return RootEntry(
            int(data["uid"]),
            int(data["gid"]),
            int(data["mode"]),
            int(data["atime_ns"]),
            int(data["mtime_ns"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _set_root(upper: Path, roots: Sequence[RootEntry | None]) -> None:
    """The merged root shows the top layer's root: give it what plain unpacking gives
    the root (the last layer entry for it, else root:root 0755)."""
    entry = next((r for r in reversed(roots) if r is not None), None)
    if entry is None:
        os.chown(upper, 0, 0)
        os.chmod(upper, 0o755)
        return
    os.chown(upper, entry.uid, entry.gid)
    os.chmod(upper, entry.mode)
    os.utime(upper, ns=(entry.atime_ns, entry.mtime_ns))


def _strip_overlay_metadata(upper: Path) -> None:
    """Overlayfs bookkeeping of the build (origin, impure, …) is not part of the tree;
    only its deletions are: whiteouts and opaque markers stay."""
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            for key in os.listxattr(path, follow_symlinks=False):
                if key.startswith("trusted.overlay.") and key != OPAQUE_XATTR:
                    if key.startswith("trusted.overlay.overlay."):
                        continue  # the image's own, escaped
                    os.removexattr(path, key, follow_symlinks=False)
