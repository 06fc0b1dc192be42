"""Hostile layer shapes for unpacker tests: one per attack seen in the wild.

Each shape builds layer tars against a sandbox: a temp dir holding the (not yet
created) target `jail/dest` and canaries around it — `outside/` with a file, a secret,
a directory, a fifo and a symlink, plus files in `jail/` and in the sandbox root. A
correct unpacker may refuse a shape (ImageError) or apply it inside dest; either way
`snapshot()` of everything outside dest must not change. The shapes follow the CVE
table of docs/research (formats §3.7): docker/podman cp and pull, containerd, umoci,
GNU tar and CPython's tarfile filters. `Layer` and `oci_layout` build the tars and
layouts the other unpacker tests use.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MTIME = 1_600_000_000
CANARY = b"canary\n"
PWNED = b"pwned\n"


@dataclass(frozen=True)
class Sandbox:
    root: Path  # everything below it, dest excepted, must stay as it was
    dest: Path  # root/jail/dest, created by the unpacker
    outside: Path  # root/outside: the canaries

    @property
    def up(self) -> str:
        """dest → outside with '..' (what a naive join would follow)."""
        return "../../outside"

    @property
    def abs(self) -> str:
        """outside as an absolute host path (what a naive symlink resolution would hit)."""
        return str(self.outside)

    def inside(self, path: str) -> Path:
        """Where an in-image absolute path lands when resolved with dest as root."""
        return self.dest / path.lstrip("/")


def make_sandbox(base: Path) -> Sandbox:
    root = base / "sandbox"
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (root / "jail").mkdir()
    for path, mode in (
        (outside / "victim", 0o644),
        (outside / "secret", 0o600),
        (outside / "dir" / "file", 0o644),
        (root / "jail" / "victim", 0o644),
        (root / "victim", 0o644),
    ):
        path.write_bytes(CANARY)
        path.chmod(mode)
    os.mkfifo(outside / "fifo", 0o644)
    (outside / "link").symlink_to("victim")
    os.setxattr(outside / "victim", "user.canary", b"1")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(Path(dirpath) / name, ns=(10**18, 10**18), follow_symlinks=False)
    return Sandbox(root, root / "jail" / "dest", outside)


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[object, ...]]:
    """Everything below root but exclude: types, modes, owners, contents, xattrs, times.

    ctime is in: any chmod, chown, xattr or link-count change shows even if undone.
    """
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == exclude:
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if here / d != exclude]
        for path in [here, *(here / n for n in [*dirnames, *filenames])]:
            if path == here and path != root:
                continue  # listed by its parent
            st = os.lstat(path)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = st.st_rdev
            xattrs = sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
            )
            # Creating and removing exclude moves its parent's times and link count.
            volatile = path == exclude.parent
            times: tuple[int, ...] = () if volatile else (st.st_mtime_ns, st.st_ctime_ns)
            out[str(path.relative_to(root))] = (
                stat.filemode(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size,
                None if volatile else st.st_nlink,
                st.st_ino,
                content,
                tuple(xattrs),
                *times,
            )
    return out


def snapshot_diff(
    before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]
) -> str:
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)} -> {after.get(key)}")
    return "\n".join(lines)


class Layer:
    """A tar built entry by entry (PAX format unless told), including malformed ones."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.TarFile(
            fileobj=self._buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
        )

    def add(
        self,
        name: str,
        kind: bytes = tarfile.REGTYPE,
        data: bytes = b"",
        *,
        mode: int | None = None,
        linkname: str = "",
        uid: int = 0,
        gid: int = 0,
        mtime: int = MTIME,
        pax: dict[str, str] | None = None,
        dev: tuple[int, int] = (0, 0),
    ) -> Layer:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
        info.linkname = linkname
        info.uid, info.gid = uid, gid
        info.mtime = mtime
        info.devmajor, info.devminor = dev
        if pax:
            info.pax_headers = dict(pax)
        if kind in tarfile.REGULAR_TYPES:
            info.size = len(data)
            self._tar.addfile(info, io.BytesIO(data))
        else:
            self._tar.addfile(info)
        return self

    def file(self, name: str, data: bytes = PWNED, **kw: Any) -> Layer:
        return self.add(name, tarfile.REGTYPE, data, **kw)

    def dir(self, name: str, **kw: Any) -> Layer:
        return self.add(name, tarfile.DIRTYPE, **kw)

    def symlink(self, name: str, target: str, **kw: Any) -> Layer:
        return self.add(name, tarfile.SYMTYPE, linkname=target, **kw)

    def hardlink(self, name: str, target: str, **kw: Any) -> Layer:
        return self.add(name, tarfile.LNKTYPE, linkname=target, **kw)

    def raw(self, header: tarfile.TarInfo, fmt: int = tarfile.USTAR_FORMAT) -> Layer:
        """A header block (or PAX headers + block) with no data behind it."""
        block = header.tobuf(fmt, "utf-8", "surrogateescape")
        self._tar.fileobj.write(block)
        self._tar.offset += len(block)
        return self

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def write_layers(layers: list[bytes], where: Path) -> list[tuple[Path, str]]:
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(layers):
        path = where / f"layer{i}.tar"
        path.write_bytes(data)
        out.append((path, TAR))
    return out


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(
    tmp_path: Path,
    tars: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    manifest_extra: dict[str, object] | None = None,
    gz: bool = True,
) -> tuple[Path, str]:
    """An OCI layout (tag latest) of the given layer tars; diff_ids may be overridden."""
    layout = tmp_path / "oci"
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": GZIP if gz else TAR, **_blob(layout, gzip.compress(t) if gz else t)}
        for t in tars
    ]
    if diff_ids is None:
        diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    config: dict[str, object] = {"architecture": "amd64", "os": "linux"}
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(layout, json.dumps(config).encode()),
        },
        "layers": layers,
        **(manifest_extra or {}),
    }
    m = _blob(layout, json.dumps(manifest).encode())
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    m["mediaType"] = manifest["mediaType"]
    m["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [m]}))
    return layout, str(m["digest"])


@dataclass(frozen=True)
class Shape:
    id: str
    attack: str  # the CVE or the bug class it reproduces
    build: Callable[[Sandbox], list[bytes]]
    expect: str  # "error" or "ok" (applied, contained)
    check: Callable[[Sandbox], None] | None = None  # for "ok": where things must have landed


def _is_file(path: Path, data: bytes = PWNED) -> None:
    assert path.is_file() and not path.is_symlink(), path
    assert path.read_bytes() == data, path


def _big_file(size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo("bomb")
    info.size = size
    return info


def _ext_header(size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = size
    return info


SHAPES: list[Shape] = []

_Build = Callable[[Sandbox], list[bytes]]


def shape(
    id: str, attack: str, expect: str, check: Callable[[Sandbox], None] | None = None
) -> Callable[[_Build], _Build]:
    def register(build: _Build) -> _Build:
        assert id not in {s.id for s in SHAPES}, id
        SHAPES.append(Shape(id, attack, build, expect, check))
        return build

    return register


# -- names that climb or are absolute (CVE-2007-4559; CVE-2022-23648 is the same with Volumes)


@shape("dotdot-name", "CVE-2007-4559", "error")
def _dotdot_name(b: Sandbox) -> list[bytes]:
    return [Layer().file(f"{b.up}/victim").bytes()]


@shape("dotdot-deep", "CVE-2007-4559", "error")
def _dotdot_deep(b: Sandbox) -> list[bytes]:
    return [Layer().dir("a").file("a/b/../../../../outside/victim").bytes()]


@shape("dotdot-dir-entry", "CVE-2007-4559", "error")
def _dotdot_dir(b: Sandbox) -> list[bytes]:
    return [Layer().dir(f"{b.up}/newdir", mode=0o777).bytes()]


@shape("dotdot-after-root-slash", "CVE-2007-4559", "error")
def _slash_dotdot(b: Sandbox) -> list[bytes]:
    return [Layer().file("/../../outside/victim").bytes()]


@shape("absolute-name", "CVE-2007-4559", "ok", lambda b: _is_file(b.inside(f"{b.abs}/victim")))
def _absolute(b: Sandbox) -> list[bytes]:
    return [Layer().file(f"{b.abs}/victim").bytes()]


@shape("gnu-longname-dotdot", "CVE-2007-4559", "error")
def _gnu_long(b: Sandbox) -> list[bytes]:
    return [Layer(tarfile.GNU_FORMAT).file("../" * 40 + "outside/victim").bytes()]


@shape("nul-in-name", "NUL truncation", "error")
def _nul_name(b: Sandbox) -> list[bytes]:
    return [Layer().file("x", pax={"path": f"evil\0/{b.up}/victim"}).bytes()]


@shape("overlong-name", "PATH_MAX", "error")
def _long_name(b: Sandbox) -> list[bytes]:
    return [Layer().file("a/" * 2500 + "f").bytes()]


@shape("overlong-component", "NAME_MAX", "error")
def _long_component(b: Sandbox) -> list[bytes]:
    return [Layer().file("x" * 300).bytes()]


@shape("deep-nesting", "descriptor/recursion exhaustion", "error")
def _deep(b: Sandbox) -> list[bytes]:
    return [Layer().file("d/" * 1000 + "f").bytes()]


# -- a symlink, then a write through it (CVE-2014-6407, CVE-2014-9356, CVE-2025-45582)


@shape(
    "symlink-abs-then-write",
    "CVE-2014-9356",
    "ok",
    lambda b: _is_file(b.inside(f"{b.abs}/victim")),
)
def _sym_abs(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("x", b.abs).file("x/victim").bytes()]


@shape(
    "symlink-dotdot-then-write",
    "CVE-2014-6407",
    "ok",
    lambda b: _is_file(b.dest / "outside/dir/file"),
)
def _sym_dotdot(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("x", b.up).file("x/victim").file("x/dir/file").bytes()]


@shape(
    "symlink-dotdot-next-layer",
    "CVE-2025-45582",
    "ok",
    lambda b: _is_file(b.dest / "outside/secret"),
)
def _sym_next(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("x", f"../../../{b.up}").bytes(),
        Layer().file("x/victim").file("x/secret").bytes(),
    ]


@shape(
    "symlink-abs-next-layer",
    "CVE-2025-45582",
    "ok",
    lambda b: _is_file(b.inside(f"{b.abs}/newdir/new")),
)
def _sym_abs_next(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("x", b.abs).bytes(),
        Layer().file("x/victim").file("x/newdir/new").bytes(),
    ]


@shape("symlink-to-root-dot", "CVE-2021-29136", "ok", lambda b: _is_file(b.dest / "victim"))
def _sym_root_dot(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("etc", "/.").bytes(), Layer().file("etc/victim").bytes()]


@shape("root-entry-is-symlink", "CVE-2021-29136", "error")
def _root_symlink(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("/.", b.abs).bytes(), Layer().file("victim").bytes()]


@shape("root-entry-is-file", "CVE-2021-29136", "error")
def _root_file(b: Sandbox) -> list[bytes]:
    return [Layer().file("./").bytes()]


@shape("empty-name-file", "CVE-2021-29136", "error")
def _empty_name(b: Sandbox) -> list[bytes]:
    return [Layer().file("").bytes()]


@shape(
    "symlink-chain-out",
    "CVE-2018-15664",
    "ok",
    lambda b: _is_file(b.dest / "outside/victim"),
)
def _sym_chain(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("a", "../..").symlink("b", "a/a/a/outside").file("b/victim").bytes()]


@shape(
    "symlink-proc-self-root",
    "CVE-2019-10152",
    "ok",
    lambda b: _is_file(b.inside(f"/proc/self/root{b.abs}/victim")),
)
def _sym_proc(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("p", f"/proc/self/root{b.abs}").file("p/victim").bytes()]


@shape("symlink-loop", "ELOOP", "error")
def _sym_loop(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("a", "b").symlink("b", "a").file("a/x").bytes()]


@shape("nul-in-symlink-target", "NUL truncation", "error")
def _nul_symlink(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("s", "x", pax={"linkpath": f"{b.up}\0"}).bytes()]


@shape("file-over-outside-symlink", "CVE-2007-4559", "ok", lambda b: _is_file(b.dest / "f"))
def _file_over_sym(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("f", f"{b.abs}/victim").file("f").bytes()]


@shape(
    "file-over-outside-symlink-next-layer",
    "CVE-2007-4559",
    "ok",
    lambda b: _is_file(b.dest / "f"),
)
def _file_over_sym_next(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("f", f"{b.up}/victim").bytes(), Layer().file("f").bytes()]


@shape(
    "implicit-dirs-through-symlink",
    "CVE-2014-6407",
    "ok",
    lambda b: _is_file(b.inside(f"{b.abs}/sub/deeper/f")),
)
def _implicit(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("x", b.abs).bytes(), Layer().file("x/sub/deeper/f").bytes()]


@shape(
    "duplicate-entries",
    "duplicate paths in one layer",
    "ok",
    lambda b: _is_file(b.inside(f"{b.abs}/victim"), b"twice\n"),
)
def _duplicates(b: Sandbox) -> list[bytes]:
    layer = Layer().dir("x").symlink("x", b.abs).file("x/victim")
    return [layer.file("x/victim", b"twice\n").bytes()]


# -- hard links (CVE-2014-6407; CVE-2024-12718 / CVE-2025-4330 tarfile filter bypasses)


@shape("hardlink-absolute-outside", "CVE-2025-4330", "error")
def _hl_abs(b: Sandbox) -> list[bytes]:
    return [Layer().hardlink("h", f"{b.abs}/victim").bytes()]


@shape("hardlink-dotdot", "CVE-2025-4330", "error")
def _hl_dotdot(b: Sandbox) -> list[bytes]:
    return [Layer().hardlink("h", f"{b.up}/victim").bytes()]


@shape("hardlink-dotdot-in-linkname", "CVE-2025-4330", "error")
def _hl_dotdot_mid(b: Sandbox) -> list[bytes]:
    return [Layer().dir("a").hardlink("h", "a/../../../outside/victim").bytes()]


@shape("hardlink-via-symlink-dir", "CVE-2025-4330", "error")
def _hl_via_sym(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("s", b.abs).hardlink("h", "s/victim").bytes()]


@shape("hardlink-via-symlink-next-layer", "CVE-2014-6407", "error")
def _hl_via_sym_next(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("s", b.up).bytes(), Layer().hardlink("h", "s/secret").bytes()]


@shape(
    "hardlink-to-outside-symlink-then-write",
    "CVE-2014-6407",
    "ok",
    lambda b: _is_file(b.dest / "h"),
)
def _hl_sym_write(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("s", f"{b.abs}/victim").hardlink("h", "s").file("h").bytes()]


@shape(
    "hardlink-to-outside-symlink-write-next-layer",
    "CVE-2014-6407",
    "ok",
    lambda b: _is_file(b.dest / "s"),
)
def _hl_sym_write_next(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("s", f"{b.up}/victim").hardlink("h", "s").bytes(),
        Layer().file("h").file("s").bytes(),
    ]


@shape("hardlink-to-root", "hard link to a directory", "error")
def _hl_root(b: Sandbox) -> list[bytes]:
    return [Layer().hardlink("h", "./").bytes()]


@shape("hardlink-to-dir", "hard link to a directory", "error")
def _hl_dir(b: Sandbox) -> list[bytes]:
    return [Layer().dir("d").hardlink("h", "d").bytes()]


@shape("nul-in-hardlink-target", "NUL truncation", "error")
def _nul_hardlink(b: Sandbox) -> list[bytes]:
    return [Layer().file("f").hardlink("h", "x", pax={"linkpath": "f\0/../../x"}).bytes()]


# -- whiteouts through symlinks ("etc -> /" + "etc/.wh.shadow")


@shape("whiteout-through-abs-symlink", "whiteout under a symlinked parent", "ok")
def _wh_abs(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("etc", b.abs).bytes(),
        Layer().file("etc/.wh.victim").file("etc/.wh.dir").bytes(),
    ]


@shape("whiteout-through-dotdot-symlink", "whiteout under a symlinked parent", "ok")
def _wh_dotdot(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("etc", b.up).bytes(), Layer().file("etc/.wh.secret").bytes()]


@shape("whiteout-through-root-symlink", "whiteout under a symlinked parent", "ok")
def _wh_root(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("etc", "/").bytes(), Layer().file("etc/.wh.victim").bytes()]


@shape("opaque-through-symlink", "whiteout under a symlinked parent", "ok")
def _opq_abs(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("d", b.abs).bytes(), Layer().file("d/.wh..wh..opq").bytes()]


@shape("opaque-through-dotdot-symlink", "whiteout under a symlinked parent", "ok")
def _opq_dotdot(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("d", f"{b.up}/dir").bytes(),
        Layer().file("d/.wh..wh..opq").bytes(),
    ]


def _absent(path: Path) -> None:
    assert not os.path.lexists(path), path


@shape(
    "whiteout-of-symlink-to-outside-dir",
    "recursive delete following a symlink",
    "ok",
    lambda b: _absent(b.dest / "l"),
)
def _wh_symlink(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("l", b.abs).bytes(), Layer().file(".wh.l").bytes()]


@shape("whiteout-dotdot-name", "CVE-2007-4559", "error")
def _wh_dotdot_name(b: Sandbox) -> list[bytes]:
    return [Layer().file("a/../../.wh.outside").bytes()]


@shape("opaque-dotdot-name", "CVE-2007-4559", "error")
def _opq_dotdot_name(b: Sandbox) -> list[bytes]:
    return [Layer().file(f"{b.up}/.wh..wh..opq").bytes()]


@shape("whiteout-alone", "invalid whiteout", "error")
def _wh_alone(b: Sandbox) -> list[bytes]:
    return [Layer().file(".wh.").bytes()]


@shape("whiteout-of-dot", "invalid whiteout", "error")
def _wh_dot(b: Sandbox) -> list[bytes]:
    return [Layer().dir("d").file("d/.wh..").bytes()]


@shape("whiteout-of-dotdot", "invalid whiteout", "error")
def _wh_dotdot2(b: Sandbox) -> list[bytes]:
    return [Layer().dir("d").file("d/.wh...").bytes()]


# -- metadata through a symlinked path (CVE-2021-32760), special files


def _real_dir(path: Path) -> None:
    assert path.is_dir() and not path.is_symlink(), path


@shape("dir-over-outside-symlink", "CVE-2021-32760", "ok", lambda b: _real_dir(b.dest / "d"))
def _dir_over_sym(b: Sandbox) -> list[bytes]:
    evil = {"SCHILY.xattr.trusted.evil": "1"}
    return [
        Layer().symlink("d", b.abs).bytes(),
        Layer().dir("d", mode=0o7777, uid=4242, mtime=0, pax=evil).bytes(),
    ]


@shape(
    "dir-over-outside-symlink-same-layer",
    "CVE-2021-32760",
    "ok",
    lambda b: _is_file(b.dest / "d/file"),
)
def _dir_over_sym_same(b: Sandbox) -> list[bytes]:
    return [Layer().symlink("d", f"{b.up}/dir").dir("d", mode=0o777).file("d/file").bytes()]


@shape("symlink-entry-with-metadata", "CVE-2021-32760", "ok")
def _sym_meta(b: Sandbox) -> list[bytes]:
    evil = {"SCHILY.xattr.trusted.evil": "1"}
    layer = Layer().symlink(
        "x", f"{b.abs}/victim", mode=0o4777, uid=4242, gid=4242, mtime=0, pax=evil
    )
    return [layer.bytes()]


@shape("dir-entry-through-symlinked-parent", "CVE-2021-32760", "ok")
def _dir_via_sym(b: Sandbox) -> list[bytes]:
    evil = {"SCHILY.xattr.user.evil": "1"}
    return [
        Layer().symlink("p", b.abs).bytes(),
        Layer().dir("p/dir", mode=0o777, uid=4242, mtime=0, pax=evil).bytes(),
    ]


def _char_device(path: Path) -> None:
    assert path.is_char_device(), path


@shape(
    "device-through-symlinked-parent",
    "device node planted outside",
    "ok",
    lambda b: _char_device(b.inside(f"{b.abs}/victim")),
)
def _dev_via_sym(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("d", b.abs).bytes(),
        Layer().add("d/victim", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)).bytes(),
    ]


def _fifo(path: Path) -> None:
    assert path.is_fifo(), path


@shape(
    "fifo-over-outside-symlink", "fifo replacing a host file", "ok", lambda b: _fifo(b.dest / "x")
)
def _fifo_over_sym(b: Sandbox) -> list[bytes]:
    return [
        Layer().symlink("x", f"{b.up}/victim").bytes(),
        Layer().add("x", tarfile.FIFOTYPE).bytes(),
    ]


@shape("fifo-dotdot", "fifo replacing a host file", "error")
def _fifo_dotdot(b: Sandbox) -> list[bytes]:
    return [Layer().add(f"{b.up}/victim", tarfile.FIFOTYPE).bytes()]


@shape("parent-is-a-file", "ENOTDIR", "error")
def _parent_file(b: Sandbox) -> list[bytes]:
    return [Layer().file("f").file("f/x").bytes()]


@shape("negative-owner", "chown(-1) would keep root", "error")
def _neg_owner(b: Sandbox) -> list[bytes]:
    return [Layer().file("f", pax={"uid": "-1"}).bytes()]


@shape("unknown-type", "tarfile extracts unknown types as files", "error")
def _unknown(b: Sandbox) -> list[bytes]:
    return [Layer().add("v", b"V").bytes()]


# -- sizes: decompression bombs, absurd headers


@shape("huge-file-size-claim", "decompression bomb", "error")
def _bomb(b: Sandbox) -> list[bytes]:
    return [Layer().raw(_big_file(1 << 50), tarfile.PAX_FORMAT).bytes()]


@shape("huge-pax-header", "huge PAX header", "error")
def _huge_pax(b: Sandbox) -> list[bytes]:
    return [Layer().raw(_ext_header(1 << 30)).bytes()]
