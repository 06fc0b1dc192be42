"""Keeping every write of an unpack inside the target directory.

This is the security-critical part of unpacking: a layer is untrusted input, and
whatever it contains, nothing outside the target directory may change. The argument:

* Every path is walked component by component from a descriptor of the root, each
  step an ``openat(O_PATH | O_NOFOLLOW | O_DIRECTORY)``. A symlink met on the way is
  resolved against the root as if chrooted (absolute targets restart at the root,
  ``..`` stops there, at most 40 hops) — the semantics of umoci's securejoin and of
  openat2(RESOLVE_IN_ROOT), so layers that write through in-image symlinks (such as
  ``lib -> usr/lib``) land where the image means. Nothing is cached between entries.
* The last component is never followed: existing entries are removed with
  unlinkat/rmdir on directory descriptors, files are created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, and owner, mode, xattrs and times are set on the
  new file's descriptor or with the no-follow ``*at`` calls.
* Entry names are normalized lexically; a name or hard-link target that would climb
  above the root with ``..``, names holding NUL, longer than PATH_MAX or with a
  component longer than NAME_MAX are refused. Hard links are made with
  ``linkat`` without AT_SYMLINK_FOLLOW, to a target resolved inside the root.
* The root stays 0700 while layers are applied (setuid binaries and device nodes
  are not reachable by other users of the host before the tree is complete) and gets
  its final owner and mode last. On any failure the partial tree is removed.
* Space: a layer may not write more than the free space (and inodes) of the target's
  filesystem, extended headers are capped, and entries are counted.

Root.walk and remove below carry the first two points; cos.oci.unpack reaches a
parent directory only through walk, and removes only through remove.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from cos.errors import ImageError
from cos.log import log

MAX_NAME = 4096  # PATH_MAX
MAX_COMPONENT = 255  # NAME_MAX
MAX_DEPTH = 256  # directories below the root; keeps descriptors and recursion bounded
MAX_SYMLINK_HOPS = 40  # the kernel's MAXSYMLINKS
HOSTILE = "the layer is malformed or hostile; rebuild the image from a trusted source"

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def show(name: str) -> str:
    """A name as one printable line (names may hold newlines or undecodable bytes)."""
    text = repr(name)
    return text if len(text) <= 160 else text[:157] + "..."


def clean(name: str, what: str) -> list[str]:
    """Components of an in-image path, relative to the root; refuses escapes and junk."""
    if "\0" in name:
        raise ImageError(f"{what} {show(name)} contains a NUL byte", hint=HOSTILE)
    if len(os.fsencode(name)) > MAX_NAME:
        raise ImageError(f"{what} is longer than {MAX_NAME} bytes: {show(name)}", hint=HOSTILE)
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ImageError(f"{what} {show(name)} climbs out of the root", hint=HOSTILE)
            parts.pop()
            continue
        if len(os.fsencode(part)) > MAX_COMPONENT:
            raise ImageError(
                f"{what} {show(name)} has a component longer than {MAX_COMPONENT} bytes",
                hint=HOSTILE,
            )
        parts.append(part)
    return parts


def join(key: str, name: str) -> str:
    return f"{key}/{name}" if key else name


class Root:
    """The target directory, held open; every path below it is reached through walk.

    on_mkdir(parent path, parent descriptor) runs before walk makes a missing
    directory (the unpacker keeps the parent's times and counts the space).
    Errors do not name the layer: the unpacker prefixes that.
    """

    def __init__(self, fd: int, on_mkdir: Callable[[str, int], None]) -> None:
        self.fd = fd
        self._on_mkdir = on_mkdir

    def walk(self, parts: Sequence[str], create: bool) -> tuple[int, str] | None:
        """O_PATH descriptor and in-root path of directory parts, symlinks resolved in root.

        Missing directories are made (create) or end the walk with None; a component
        that is neither a directory nor a symlink is refused (create) or None.
        """
        todo = list(reversed(parts))
        names: list[str] = []
        cur = self.fd
        hops = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":
                    if names:
                        names.pop()
                        old, cur = cur, self.fd
                        cur = self._reopen(old, names)
                    continue
                try:
                    fd = os.open(name, PATH_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        self.release(cur)
                        return None
                    self._on_mkdir("/".join(names), cur)
                    os.mkdir(name, 0o755, dir_fd=cur)
                    fd = os.open(name, DIR_FLAGS, dir_fd=cur)
                    os.fchmod(fd, 0o755)  # whatever the umask
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        if not create:
                            self.release(cur)
                            return None
                        where = "/".join([*names, name])
                        raise ImageError(
                            f"{show(where)} is not a directory but a layer puts entries below it",
                            hint=HOSTILE,
                        ) from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise ImageError(
                            f"too many levels of symbolic links at "
                            f"{show('/'.join([*names, name]))}",
                            hint=HOSTILE,
                        ) from None
                    target = os.readlink(name, dir_fd=cur)
                    if not target:  # the kernel resolves these to ENOENT
                        if not create:
                            self.release(cur)
                            return None
                        raise ImageError(
                            f"empty symlink {show('/'.join([*names, name]))} "
                            "on the way to an entry",
                            hint=HOSTILE,
                        ) from None
                    if target.startswith("/"):
                        names = []
                        self.release(cur)
                        cur = self.fd
                    todo.extend(reversed(target.split("/")))
                    continue
                if cur != self.fd:
                    os.close(cur)
                cur = fd
                names.append(name)
                if len(names) > MAX_DEPTH:
                    raise ImageError(
                        f"directories nested deeper than {MAX_DEPTH}",
                        hint=HOSTILE,
                    )
        except BaseException:
            self.release(cur)
            raise
        if cur == self.fd:
            cur = os.dup(self.fd)
        return cur, "/".join(names)

    def release(self, fd: int) -> None:
        if fd != self.fd:
            os.close(fd)

    def _reopen(self, cur: int, names: Sequence[str]) -> int:
        """After '..': walk down again from the root (no symlinks: these were directories)."""
        self.release(cur)
        fd = self.fd
        try:
            for name in names:
                nfd = os.open(name, PATH_FLAGS, dir_fd=fd)
                self.release(fd)
                fd = nfd
        except BaseException:
            self.release(fd)
            raise
        return fd

    def exact(self, key: str) -> tuple[int, str] | None:
        """Parent descriptor and name of an already resolved path, or None if it moved."""
        parts = key.split("/")
        fd = self.fd
        try:
            for name in parts[:-1]:
                nfd = os.open(name, PATH_FLAGS, dir_fd=fd)
                self.release(fd)
                fd = nfd
        except OSError:
            self.release(fd)
            return None
        return (fd if fd != self.fd else os.dup(fd)), parts[-1]


def remove(dfd: int, name: str) -> None:
    """Remove name in dfd and everything below it, following no symlink."""
    try:
        os.unlink(name, dir_fd=dfd)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: Linux's answer to unlink(directory) on some filesystems
        if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
            raise
    fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
    try:
        with os.scandir(fd) as it:
            children = [e.name for e in it]
        for child in children:
            remove(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)


def empty_mountpoint(dest: Path) -> None:
    """Remove what a failed unpack left in a mountpoint, keeping the mountpoint."""
    try:
        fd = os.open(dest, DIR_FLAGS)
    except OSError:
        return
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it if e.name != "lost+found"]
        for name in names:
            remove(fd, name)
    except OSError as exc:
        log.warning("could not empty %s: %s", dest, exc)
    finally:
        os.close(fd)


def remove_tree(dest: Path) -> None:
    """Remove a partial tree (it may hold setuid files, devices and hostile symlinks)."""
    try:
        parent = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        remove(parent, dest.name)
    except OSError as exc:
        log.warning("could not remove the partial tree %s: %s", dest, exc)
    finally:
        os.close(parent)
