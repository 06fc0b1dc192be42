"""Rechunk benchmark: what a machine pulls for a real Debian update, rechunked or not.

Three releases of the base image's OS (images/base/packages.txt), each made by
mmdebstrap from the machine's apt sources:

    v1  the `bookworm` suite alone (the point release)
    v2  bookworm + bookworm-updates + bookworm-security (what a monthly update brings)
    v3  v2 + one added package (curl, with what it depends on: what users add most)
    v3s v2 + one small package (jq): the fixed cost of any change (dpkg's status,
        written twice, and the directories' entries) against the least package bytes

Each release is imported as a one-layer OCI image (what a `FROM scratch` + `ADD
rootfs.tar` or a squashed build gives; a layered build's layers all change too, since
they sit on a changed base), and rewritten by `cos rechunk`, v2 with `--prev` v1 and v3
with `--prev` v2: the producer's workflow. Both series go to a registry on 127.0.0.1;
a store that holds release k pulls release k+1 (cos's layer store, the code `cos
upgrade` runs) and the bytes of the blobs it fetched are counted.

The floor is the compressed size of the changed packages' files: for each package whose
version changed or that is new, its files (dpkg's list, merged-/usr paths) as a tar,
gzip level 6 like cos's layers, summed over the packages. A rechunker cannot do better
than moving exactly those. SOURCE_DATE_EPOCH is fixed for all three builds, so files a
build generates (caches, logs) carry the same stamp when their content is the same.

    python -m bench.run --only rechunk [--workdir /var/tmp]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.registry import registry

from bench.common import MIB, REPO, Row, new_bytes, print_table, scratch, sh
from bench.pull import cos_pull

SUITE = "bookworm"
SOURCE_DATE_EPOCH = "1747699200"  # 2025-05-20, any fixed stamp will do
_MERGED = ("bin/", "sbin/", "lib/", "lib32/", "lib64/", "libx32/")


@dataclass(frozen=True)
class Release:
    name: str
    suites: tuple[str, ...] | None  # None: SUITE with its -updates and -security
    extra: tuple[str, ...] = ()
    prev: str | None = None  # the release it updates (rechunked with --prev of it)


RELEASES = (
    Release("v1", (SUITE,)),
    Release("v2", None, (), "v1"),
    Release("v3", None, ("curl",), "v2"),
    Release("v3s", None, ("jq",), "v2"),
)


def host_sources(suites: tuple[str, ...] | None) -> list[str]:
    """The machine's apt sources for SUITE and its -updates/-security, as one-line
    entries (images/base/apt-sources, what the base image is built from), limited to
    suites (None: all three). No archive is named here."""
    out = subprocess.run(
        [sys.executable, str(REPO / "images/base/apt-sources"), SUITE],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    lines = out.stdout.splitlines()
    chosen = [x for x in lines if suites is None or _suite(x) in suites]
    if not chosen:
        raise RuntimeError(f"the machine's apt sources have no suite among {suites}")
    return chosen


def _suite(line: str) -> str:
    words = re.sub(r"\[[^]]*\]", "", line).split()
    return words[2] if len(words) > 2 else ""


def build_release(rel: Release, work: Path, layout: Path, cache: Path) -> Path:
    """rel's root tree as a tar (kept in cache for the same sources and packages), and
    as the one-layer image plain-<name> in layout."""
    packages = [
        x.strip()
        for x in (REPO / "images/base/packages.txt").read_text().splitlines()
        if x.strip() and not x.lstrip().startswith("#")
    ]
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"{rel.name}.tar"
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    argv = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=tar",
        "--quiet",
        f"--include={','.join([*packages, *rel.extra])}",
        # the hooks of images/base/build.sh: what the real OS layer is made with
        '--customize-hook=rm -f "$1"/etc/hostname "$1"/etc/machine-id && touch "$1"/etc/machine-id',
        '--customize-hook=rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*'
        ' "$1"/var/log/*.log',
        '--customize-hook=rm -f "$1"/boot/initrd.img-*',
        SUITE,
        str(tar),
        *host_sources(rel.suites),
    ]
    stamp = tar.with_suffix(".argv")
    if tar.is_file() and stamp.is_file() and stamp.read_text() == "\n".join(argv):
        print(f"  {rel.name}: the tree of an earlier run ({tar})", flush=True)
    else:
        stamp.unlink(missing_ok=True)
        r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"mmdebstrap {rel.name}: exit {r.returncode}\n{r.stderr[-3000:]}")
        stamp.write_text("\n".join(argv))
    bundle = work / f"bundle-{rel.name}"
    tag = f"plain-{rel.name}"
    if not (layout / "index.json").exists():
        sh(["umoci", "init", "--layout", layout])
    sh(["umoci", "new", "--image", f"{layout}:{tag}"])
    sh(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle])
    sh(
        [
            "tar",
            "-C",
            bundle / "rootfs",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            tar,
        ]
    )
    sh(["umoci", "repack", "--image", f"{layout}:{tag}", bundle])
    sh(["rm", "-rf", bundle])
    return tar


def _canonical(path: str) -> str:
    p = path.lstrip("./").lstrip("/")
    return f"usr/{p}" if p.startswith(_MERGED) else p


def dpkg_view(tar: Path) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(package → version, package → its files) from a root tree's tar."""
    versions: dict[str, str] = {}
    files: dict[str, set[str]] = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            name = m.name.lstrip("./")
            if not m.isfile():
                continue
            if name == "var/lib/dpkg/status":
                text = tf.extractfile(m).read().decode()  # type: ignore[union-attr]
                for para in text.split("\n\n"):
                    pkg = re.search(r"^Package: (\S+)", para, re.M)
                    ver = re.search(r"^Version: (\S+)", para, re.M)
                    arch = re.search(r"^Architecture: (\S+)", para, re.M)
                    if pkg and ver:
                        key = pkg[1] if not arch or arch[1] == "all" else f"{pkg[1]}:{arch[1]}"
                        versions[key] = ver[1]
            elif name.startswith("var/lib/dpkg/info/") and name.endswith(".list"):
                stem = name.removeprefix("var/lib/dpkg/info/").removesuffix(".list")
                text = tf.extractfile(m).read().decode()  # type: ignore[union-attr]
                files[stem] = {_canonical(x) for x in text.splitlines() if x not in ("/.", "")}
    return versions, files


def _files_of(pkg: str, files: dict[str, set[str]]) -> set[str]:
    # dpkg names the list pkg.list or pkg:arch.list, the status says which arch
    return files.get(pkg) or files.get(pkg.split(":")[0]) or files.get(f"{pkg}:amd64") or set()


def changed_bytes(old: Path, new: Path) -> tuple[list[str], int]:
    """The packages that changed from old to new, and their files compressed."""
    v_old, _ = dpkg_view(old)
    v_new, files = dpkg_view(new)
    changed = sorted(p for p, v in v_new.items() if v_old.get(p) != v)
    wanted: dict[str, str] = {}
    for pkg in changed:
        for f in _files_of(pkg, files):
            wanted.setdefault(f, pkg)
    per: dict[str, tarfile.TarFile] = {}
    bufs: dict[str, io.BytesIO] = {}
    with tarfile.open(new) as tf:
        for m in tf:
            owner = wanted.get(m.name.lstrip("./"))
            if owner is None or not (m.isfile() or m.issym()):
                continue
            if owner not in per:
                bufs[owner] = io.BytesIO()
                # one open archive per package, closed below once the pass is over
                per[owner] = tarfile.open(  # noqa: SIM115
                    fileobj=bufs[owner], mode="w", format=tarfile.PAX_FORMAT
                )
            per[owner].addfile(m, tf.extractfile(m) if m.isfile() else None)
    total = 0
    for pkg, t in per.items():
        t.close()
        total += len(gzip.compress(bufs[pkg].getvalue(), compresslevel=6, mtime=0))
    return changed, total


def moved(layout: Path, old: str, new: str) -> list[tuple[str, int]]:
    """(groups, size) of each layer of new that old does not have."""

    def layers(tag: str) -> list[dict[str, Any]]:
        index = json.loads((layout / "index.json").read_text())
        (digest,) = [
            m["digest"]
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        ]
        manifest = json.loads((layout / "blobs/sha256" / digest[7:]).read_text())
        return list(manifest["layers"])

    had = {x["digest"] for x in layers(old)}
    return [
        (str(x.get("annotations", {}).get("org.cos.rechunk.packages", "?")), int(x["size"]))
        for x in layers(new)
        if x["digest"] not in had
    ]


def bench(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with scratch(Path(args.workdir), "bench-rechunk") as work:
        layout = work / "oci"
        tars = []
        for rel in RELEASES:
            print(f"  mmdebstrap {rel.name} ({rel.suites or 'all suites'} {rel.extra})", flush=True)
            tars.append(
                build_release(rel, work, layout, Path(args.workdir) / "bench-rechunk-trees")
            )
            cmd = [sys.executable, "-m", "cos", "rechunk"]
            if rel.prev:
                cmd += ["--prev", f"oci:{layout}:rech-{rel.prev}"]
            sh([*cmd, f"oci:{layout}:plain-{rel.name}", f"oci:{layout}:rech-{rel.name}"])
        with registry(work / "registry") as host:
            for series in ("plain", "rech"):
                for rel in RELEASES:
                    sh(
                        [
                            "skopeo",
                            "copy",
                            "--quiet",
                            "--dest-tls-verify=false",
                            f"oci:{layout}:{series}-{rel.name}",
                            f"docker://{host}/bench/{series}:{rel.name}",
                        ]
                    )
            names = [r.name for r in RELEASES]
            for k, rel in enumerate(RELEASES):
                if rel.prev is None:
                    continue
                old, new = rel.prev, rel.name
                what = f"{old}->{new}"
                pkgs, floor = changed_bytes(tars[names.index(old)], tars[k])
                print(f"  {what}: {len(pkgs)} packages changed: {' '.join(pkgs)}", flush=True)
                for groups, size in moved(layout, f"rech-{old}", f"rech-{new}"):
                    print(f"    layer moved: {size / MIB:7.2f} MiB  {groups[:150]}", flush=True)
                got = {}
                for series in ("plain", "rech"):
                    store = work / f"store-{series}-{k}"
                    cos_pull(f"{host}/bench/{series}:{old}", store)
                    before = {f.name for f in (store / "blobs/sha256").iterdir()}
                    cos_pull(f"{host}/bench/{series}:{new}", store)
                    got[series] = new_bytes(store / "blobs/sha256", before)
                    sh(["rm", "-rf", store])
                floor_what = f"{what}: changed packages' files ({len(pkgs)} packages)"
                rows += [
                    Row("rechunk", floor_what, "MiB", [floor / MIB]),
                    Row("rechunk", f"{what}: pulled, rechunked", "MiB", [got["rech"] / MIB]),
                    Row("rechunk", f"{what}: pulled, one layer", "MiB", [got["plain"] / MIB]),
                ]
                rows[-2].floor = rows[-1].floor = floor_what
    print_table("rechunk", rows)
    return rows
