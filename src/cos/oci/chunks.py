"""Which files of a flattened image share a layer, so an update changes few layers.

A registry moves layers, not files. When every file of a Debian package lands in
its own layer (or in a layer with a few other small packages), an update that
touches a few dozen packages changes only their layers; a device that holds the
previous release pulls just those. The unit of grouping is therefore the package
that owns a file (dpkg's `info/*.list` and `status` inside the image), and for files
no package owns, a path prefix (the toolkit, /boot, /etc, the dpkg database, the
rest). dpkg's own records about a package (`var/lib/dpkg/info/PKG.*`) go with the
package, so a package that did not change leaves all of its bytes in place.

Directories are kept apart: a directory's mtime moves whenever any package adds a
file to it, so their entries form one small layer of their own, applied last so
its modes, owners and times are the final word whatever the unpacker did with
parents it had to create earlier.

Packing groups into at most N layers is a pure function of group names and sizes
(and, with a previous release, of that release's grouping), so the same input always
gives the same layers.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DIRS = "dirs:"  # the group of every directory entry; always the last layer
PATH_PREFIX = "path:"
# Unowned files by prefix, the first match wins; everything else is "path:/". Files
# that package operations rewrite (the linker cache, dpkg's and apt's records, debconf)
# have groups of their own, so adding a package moves only those.
PATH_GROUPS = (
    "usr/lib/cos",
    "boot",
    "etc/ld.so.cache",
    "etc",
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache",
    "var",
)
ENTRY_OVERHEAD = 512  # a tar header: small files still cost something
_DPKG = "var/lib/dpkg"
_MAX_HOPS = 40


@dataclass(frozen=True)
class File:
    """A non-directory of the tree: its path (relative, '/'-separated) and what it costs."""

    path: str
    size: int
    inode: tuple[int, int] | None = None  # (dev, ino) when it has other names


@dataclass
class Group:
    name: str
    paths: list[str] = field(default_factory=list)
    size: int = 0


def is_path_group(name: str) -> bool:
    return name.startswith(PATH_PREFIX) or name == DIRS


def path_group(path: str) -> str:
    for prefix in PATH_GROUPS:
        if path == prefix or path.startswith(prefix + "/"):
            return PATH_PREFIX + "/" + prefix
    return PATH_PREFIX + "/"


# --- who owns what -------------------------------------------------------------------


def _installed(status: str) -> set[str]:
    """Package names dpkg's status file lists as installed."""
    names: set[str] = set()
    for para in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            key, sep, value = line.partition(":")
            if sep and line[:1] not in (" ", "\t"):
                fields[key.strip().lower()] = value.strip()
        if fields.get("package") and fields.get("status", "").endswith(" installed"):
            names.add(fields["package"])
    return names


class _Resolver:
    """Where a directory path of the image really is: its symlinks followed inside the
    root, never out of it (merged /usr lists /lib/x for what lives in /usr/lib/x)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[str, str | None] = {"": ""}

    def dir(self, path: str) -> str | None:
        if path in self.cache:
            return self.cache[path]
        self.cache[path] = None  # a symlink loop resolves to nothing
        parent, _, name = path.rpartition("/")
        base = self.dir(parent)
        out: str | None = None
        if base is not None:
            if name in ("", "."):
                out = base
            elif name == "..":
                out = base.rpartition("/")[0]
            else:
                out = self._follow(f"{base}/{name}" if base else name)
        self.cache[path] = out
        return out

    def _follow(self, path: str) -> str | None:
        """path (its parent already resolved) as a directory, following symlinks."""
        for _ in range(_MAX_HOPS):
            full = self.root / path
            try:
                st = os.lstat(full)
            except OSError:
                return None
            if stat.S_ISDIR(st.st_mode):
                return path
            if not stat.S_ISLNK(st.st_mode):
                return None
            target = os.readlink(full)
            start = "" if target.startswith("/") else path.rpartition("/")[0]
            parts = [p for p in start.split("/") if p]
            for part in target.split("/"):
                if part == "..":
                    if parts:
                        parts.pop()
                elif part not in ("", "."):
                    parts.append(part)
            if not parts:
                return ""
            base = self.dir("/".join(parts[:-1]))
            if base is None:
                return None
            path = f"{base}/{parts[-1]}" if base else parts[-1]
        return None

    def file(self, listed: str) -> str | None:
        parent, _, name = listed.strip("/").rpartition("/")
        base = self.dir(parent)
        if base is None or not name:
            return None
        return f"{base}/{name}" if base else name


def dpkg_owners(root: Path) -> dict[str, str] | None:
    """Tree path → owning package, from dpkg's database in the tree (None: there is none).

    Packages are read in name order and the first to list a path owns it (a file in
    several packages, such as one replaced by another, lands in one layer only).
    """
    info = root / _DPKG / "info"
    try:
        status = (root / _DPKG / "status").read_text("utf-8", "surrogateescape")
        lists = sorted(e.name for e in os.scandir(info) if e.name.endswith(".list"))
    except OSError:
        return None
    installed = _installed(status)
    packages = [n[: -len(".list")] for n in lists if n[: -len(".list")].split(":")[0] in installed]
    if not packages:
        return None
    resolve = _Resolver(root)
    owners: dict[str, str] = {}
    for pkg in packages:
        text = (info / f"{pkg}.list").read_text("utf-8", "surrogateescape")
        for line in text.splitlines():
            path = resolve.file(line) if line.strip("/") else None
            if path is not None:
                owners.setdefault(path, pkg)
    # dpkg's records of a package travel with it (PKG.list, .md5sums, maintainer scripts).
    by_name = {p.split(":")[0]: p for p in packages} | {p: p for p in packages}
    for entry in sorted(os.listdir(info)):
        owner = by_name.get(entry.rpartition(".")[0])
        if owner is not None:
            owners.setdefault(f"{_DPKG}/info/{entry}", owner)
    return owners


def adopted(owners: Mapping[str, str]) -> Callable[[str], str | None]:
    """The package an unowned file belongs with, by what a package's installation made
    it from: Python's bytecode (`D/__pycache__/NAME.TAG.pyc`) goes with `D/NAME.py`; a
    file under /usr in a directory where a single package owns entries (the kernel's
    module indexes beside its modules) goes with that package. The rest (caches many
    packages feed, /etc, /var) stays in path groups."""
    single: dict[str, str | None] = {}
    for path, pkg in owners.items():
        parent = path.rpartition("/")[0]
        if parent.startswith("usr/"):
            single[parent] = pkg if single.get(parent, pkg) == pkg else None

    def owner(path: str) -> str | None:
        parent, _, name = path.rpartition("/")
        if parent.endswith("/__pycache__") and name.endswith(".pyc"):
            source = f"{parent.rpartition('/')[0]}/{name.partition('.')[0]}.py"
            return owners.get(source)
        return single.get(parent)

    return owner


def group_files(files: Iterable[File], owners: Mapping[str, str] | None) -> dict[str, Group]:
    """Groups by owner (or path prefix). All names of a hard-linked file share one group,
    so a link always finds its target in its own layer: the owner of its first owned
    name in path order, else the path group of its first name."""
    owners = owners or {}
    inferred = adopted(owners)
    ordered = sorted(files, key=lambda f: os.fsencode(f.path))
    by_inode: dict[tuple[int, int], str] = {}
    for f in ordered:
        if f.inode is not None and f.path in owners:
            by_inode.setdefault(f.inode, owners[f.path])
    counted: set[tuple[int, int]] = set()
    groups: dict[str, Group] = {}
    for f in ordered:
        name = owners.get(f.path) or inferred(f.path) or path_group(f.path)
        size = f.size
        if f.inode is not None:
            name = by_inode.setdefault(f.inode, name)
            size = 0 if f.inode in counted else size
            counted.add(f.inode)
        g = groups.setdefault(name, Group(name))
        g.paths.append(f.path)
        g.size += ENTRY_OVERHEAD + size
    return groups


# --- packing groups into layers -----------------------------------------------------


def _by_size(sizes: Mapping[str, int]) -> list[str]:
    return sorted(sizes, key=lambda n: (-sizes[n], n))


def _partition(names: Sequence[str], sizes: Mapping[str, int], bins: int) -> list[list[str]]:
    """Contiguous runs of name-sorted groups (path groups after packages) of about equal
    size: a group that changes size moves at most the boundary next to it."""
    ordered = sorted(names, key=lambda n: (is_path_group(n), n))
    total = sum(sizes[n] for n in ordered)
    out: list[list[str]] = [[]]
    done = 0
    for n in ordered:
        if out[-1] and len(out) < bins and done + sizes[n] / 2 > total * len(out) / bins:
            out.append([])
        out[-1].append(n)
        done += sizes[n]
    return out


def pack(sizes: Mapping[str, int], budget: int) -> list[list[str]]:
    """At most budget layers: a group at least as large as an even share of what is
    left gets a layer of its own; the rest share the remaining layers evenly."""
    if budget < 1 or not sizes:
        return []
    rest = _by_size(sizes)
    if len(rest) <= budget:
        return [[n] for n in rest]
    left = sum(sizes.values())
    singles: list[list[str]] = []
    while budget > 1 and sizes[rest[0]] * budget >= left:
        singles.append([rest[0]])
        left -= sizes[rest.pop(0)]
        budget -= 1
    return singles + _partition(rest, sizes, budget)


def plan(
    sizes: Mapping[str, int],
    max_layers: int,
    prev: Sequence[Sequence[str]] | None = None,
) -> list[list[str]]:
    """Layers as lists of group names, largest package layers first, path groups after
    them and the directories last; at most max_layers.

    Path groups get a layer each when they need at most a quarter of them: they hold
    what package operations rewrite, and a small update should move only the ones it
    touched. A first plan leaves one layer in sixteen free for later newcomers.

    With prev (the groups of each layer of the previous release), a layer keeps its
    groups that still exist, so an unchanged package stays in a byte-identical layer.
    Groups new in this release are packed into the layers left; when prev used them
    all, small newcomers join its lightest layer and larger ones get a layer made by
    merging its two lightest.
    """
    content = {n: s for n, s in sizes.items() if n != DIRS}
    if max_layers <= 1:
        return [sorted(sizes)] if sizes else []
    budget = max_layers - 1 if DIRS in sizes else max_layers
    paths = sorted(n for n in content if is_path_group(n))
    alone = 4 * (len(paths) + 1) <= budget
    if alone:
        budget -= len(paths)
    layers = _packages(
        {n: s for n, s in content.items() if not alone or n not in paths}, budget, prev
    )
    if alone:
        layers += [[p] for p in paths]
    layers.sort(key=lambda layer: (_volatile(layer), -sum(content[g] for g in layer), layer))
    if DIRS in sizes:
        layers.append([DIRS])
    return layers


def _packages(
    content: Mapping[str, int], budget: int, prev: Sequence[Sequence[str]] | None
) -> list[list[str]]:
    """plan()'s layers for content (no directories) in at most budget layers."""
    if prev is None:
        spare = budget // 16
        layers = pack(content, budget - spare)
    else:
        layers = [[g for g in layer if g in content] for layer in prev]
        layers = [sorted(set(layer)) for layer in layers if layer]
        seen = {g for layer in layers for g in layer}
        new = {n: s for n, s in content.items() if n not in seen}
        target = max(1, sum(content.values()) // budget)

        def weight(layer: list[str]) -> int:
            return sum(content[g] for g in layer)

        def smallest() -> list[int]:
            return sorted(range(len(layers)), key=lambda i: (weight(layers[i]), i))

        # Room for what is new: small newcomers join the lightest layer (one layer
        # changes); larger ones get layers of their own, the two lightest merged if needed.
        room = budget - (1 if new and sum(new.values()) >= target else 0)
        while len(layers) > max(room, 1):
            a, b = smallest()[:2]
            merged = sorted(layers[a] + layers[b])
            layers = [x for i, x in enumerate(layers) if i not in (a, b)] + [merged]
        if new and len(layers) >= budget:
            i = smallest()[0]
            layers[i] = sorted(layers[i] + list(new))
        elif new:
            want = -(-sum(new.values()) // target)
            layers += pack(new, max(1, min(budget - len(layers), want)))
    return layers


def _volatile(layer: Sequence[str]) -> bool:
    """Path groups hold what every build rewrites (dpkg status, caches, the initrd)."""
    return any(is_path_group(g) for g in layer)
