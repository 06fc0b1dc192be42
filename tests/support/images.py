"""Builds the images and e2e disks the tests need, once per recipe (stamps hold recipe hashes)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from cos.oci import transport

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build"
LAYOUT = BUILD / "oci"
STAMPS = BUILD / "stamps"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def sh(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kw)  # type: ignore[call-overload]


def tree_hash(*paths: Path) -> str:
    h = hashlib.sha256()
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def restored(op: str, name: str, key: str, *args: str | Path) -> bool:
    """images/cache.sh restore|restore-file: True when this machine's build cache held
    the build of that key (another clone made it from the same recipe) and it was
    copied into place."""
    argv = ["bash", str(REPO / "images/cache.sh"), op, name, key, *map(str, args)]
    return subprocess.run(argv, check=False).returncode == 0


def keep(op: str, name: str, key: str, *args: str | Path) -> None:
    """images/cache.sh keep|keep-file: a build into the machine's build cache."""
    sh(["bash", str(REPO / "images/cache.sh"), op, name, key, *map(str, args)])


def layout_digest(tag: str) -> str | None:
    if not (LAYOUT / "index.json").exists():
        return None
    return transport.layout_digest(LAYOUT, tag)


# The distribution of the images the tests use unless they name another (images/distros/).
DEFAULT_DISTRO = "bookworm"


def tag_suffix(distro: str) -> str:
    """The tag suffix of a distribution's images in LAYOUT, as its file in
    images/distros/ sets it for images/build.sh ("" for the default)."""
    text = (REPO / "images/distros" / distro).read_text()
    m = re.search(r"^TAG_SUFFIX=(\S*)$", text, re.M)
    assert m, f"images/distros/{distro} sets no TAG_SUFFIX"
    return m[1]


def ensure_vanilla(distro: str = DEFAULT_DISTRO) -> str:
    """make vanilla DISTRO=... (cached by the recipe's own stamps); returns the digest
    of the distribution's vanilla image."""
    sh(["bash", str(REPO / "images/build.sh")], cwd=REPO, env={**os.environ, "DISTRO": distro})
    tag = f"vanilla{tag_suffix(distro)}"
    digest = layout_digest(tag)
    assert digest, f"images/build.sh did not produce build/oci:{tag}"
    return digest


def ensure_e2e_image(distro: str = DEFAULT_DISTRO) -> str:
    """The vanilla image plus the test agent, tag e2e (e2e-DISTRO for another
    distribution); returns its digest."""
    vanilla = ensure_vanilla(distro)
    ctx = REPO / "tests/e2e/image"
    tag = f"e2e{tag_suffix(distro)}"
    want = hashlib.sha256((vanilla + tree_hash(ctx)).encode()).hexdigest()[:16]
    STAMPS.mkdir(parents=True, exist_ok=True)
    stamp = STAMPS / tag
    fresh = layout_digest(tag) is not None and stamp.exists() and stamp.read_text() == want
    if not fresh and restored("restore", tag, want, LAYOUT):
        stamp.write_text(want)
    elif not fresh:
        env = {**os.environ, "TMPDIR": os.environ.get("TMPDIR", "/var/tmp")}
        b = [
            *BUILDAH,
            "--root",
            str(BUILD / "containers/storage"),
            "--runroot",
            str(BUILD / "containers/run"),
        ]
        sh(
            [
                *b,
                "bud",
                "--isolation",
                "chroot",
                "--layers=false",
                "--build-arg",
                f"BASE=oci:{LAYOUT}:vanilla{tag_suffix(distro)}",
                "-t",
                "localhost/cos/e2e:latest",
                str(ctx),
            ],
            env=env,
            cwd=REPO,
        )
        sh([*b, "push", "--quiet", "localhost/cos/e2e:latest", f"oci:{LAYOUT}:{tag}"], env=env)
        subprocess.run([*b, "rmi", "--all", "--force"], capture_output=True, check=False)
        keep("keep", tag, want, LAYOUT)
        stamp.write_text(want)
    digest = layout_digest(tag)
    assert digest
    return digest


def derive(
    src_tag: str, dst_tag: str, files: dict[str, str], whiteouts: tuple[str, ...] = ()
) -> str:
    """A derivative of LAYOUT:src_tag with one more layer (files written, paths removed),
    made in seconds with `umoci raw add-layer` (no container build). Returns its digest."""
    import io
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        layer = Path(tmp) / "layer.tar"
        with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
            dirs: set[str] = set()
            entries = [(p, c.encode()) for p, c in files.items()]
            entries += [(str(Path(p).parent / f".wh.{Path(p).name}"), b"") for p in whiteouts]
            for path, data in entries:
                rel = path.lstrip("/")
                parent = Path(rel).parent
                for d in reversed([parent, *parent.parents]):
                    if str(d) not in (".", "") and str(d) not in dirs:
                        info = tarfile.TarInfo(str(d))
                        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1
                        tar.addfile(info)
                        dirs.add(str(d))
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), 0o644, 1
                tar.addfile(info, io.BytesIO(data))
        sh(
            [
                "umoci",
                "raw",
                "add-layer",
                "--image",
                f"{LAYOUT}:{src_tag}",
                "--tag",
                dst_tag,
                str(layer),
            ]
        )
    digest = layout_digest(dst_tag)
    assert digest
    return digest


def push(tag: str, registry: str, repo: str) -> str:
    """Copy LAYOUT:tag to registry/repo (plain HTTP); returns the registry reference."""
    ref = f"{registry}/{repo}"
    sh(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{LAYOUT}:{tag}",
            f"docker://{ref}",
        ]
    )
    return ref


# No GRUB menu wait on test disks: the tests choose entries through the grubenv, and
# the default wait would be paid on every boot of the suite.
TEST_DISK_CONFIG = (("COS_GRUB_TIMEOUT", "0"),)
# build-disk config of a disk with the loop snapshotter (the default before layers).
LOOP_DISK_CONFIG = (("COS_SNAPSHOTTER", "loop"),)


def cached_disk(
    name: str,
    cloud_config: str | None = None,
    args: tuple[str, ...] = (),
    config: tuple[tuple[str, str], ...] = (),
    distro: str = DEFAULT_DISTRO,
) -> Path:
    """An e2e disk of distro's e2e image (optionally built with --cloud-init, more
    build-disk args and config settings as COS_* variables), cached by image digest,
    toolkit, cloud-config, args and config, so the suite builds each once (and a clone
    takes it from the machine's build cache)."""
    digest = ensure_e2e_image(distro)
    config = (*TEST_DISK_CONFIG, *config)
    recipe = digest + tree_hash(REPO / "src/cos") + (cloud_config or "") + repr(args)
    key = hashlib.sha256((recipe + repr(config)).encode()).hexdigest()[:16]
    suffix = "qcow2" if "qcow2" in args else "raw"
    disk = BUILD / "e2e" / f"{name}-{key}.{suffix}"
    if not disk.exists():
        disk.parent.mkdir(parents=True, exist_ok=True)
        for old in disk.parent.glob(f"{name}-*"):
            old.unlink()
        if restored("restore-file", f"disk-{name}", key, disk):
            return disk
        image = f"oci:{LAYOUT}:e2e{tag_suffix(distro)}"
        argv = [sys.executable, "-m", "cos", "build-disk", image, "-o", str(disk)]
        argv += list(args)
        if cloud_config is not None:
            cfg = disk.with_suffix(".yaml")
            cfg.write_text(cloud_config)
            argv += ["--cloud-init", str(cfg)]
        env = {**os.environ, "COS_CACHE_DIR": str(BUILD / "cache"), **dict(config)}
        subprocess.run(argv, check=True, env=env)
        keep("keep-file", f"disk-{name}", key, disk)
    return disk
