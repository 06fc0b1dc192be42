"""What a tar entry says about its file besides content: owner, mode, xattrs, times.

Order matters and follows the kernel: owner first, then mode (chown clears setuid and
setgid), then xattrs (chown clears security.capability). Times come last, after
everything that would move them. Everything is set on the new file's descriptor or
with the no-follow ``*at`` calls; xattrs of symlinks and device nodes, which cannot
be opened for writing, are set through ``/proc/self/fd/<parent>/<name>`` without
following it (Linux has no lsetxattrat).

Two xattr rules differ from writing the entry as it is: ``security.selinux`` is
never taken from an image (it is host policy, and kept when clearing), and
``trusted.overlay.*`` is written escaped as ``trusted.overlay.overlay.*`` (what
umoci >= 0.5 does), so an image cannot steer an overlayfs that later uses the tree
as a layer. Both the SCHILY.xattr.* and the LIBARCHIVE.xattr.* PAX records count.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import tarfile
import urllib.parse
from decimal import Decimal, InvalidOperation

from cos.errors import ImageError
from cos.log import log
from cos.oci.contain import HOSTILE, show

_IGNORED_XATTRS = frozenset({"security.selinux"})
_OVERLAY = "trusted.overlay."


_MAX_SECONDS = 2**63 // 10**9  # what a signed 64-bit count of nanoseconds holds


def _ns(value: object, default: int) -> int:
    """seconds (a PAX decimal or the header's number) in ns; default when absent or not a
    time a file can carry (a huge exponent must not become a huge integer)."""
    if value is None:
        return default
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return default
    if not d.is_finite() or d.copy_abs() >= _MAX_SECONDS:
        return default
    return int(d.scaleb(9).to_integral_value())


def times(m: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns; PAX times keep their sub-second part."""
    pax = m.pax_headers
    mtime = _ns(pax.get("mtime"), _ns(m.mtime, 0))
    return _ns(pax.get("atime"), mtime), mtime


def xattrs(m: tarfile.TarInfo) -> dict[str, bytes]:
    """The xattrs an entry's PAX records carry (SCHILY over LIBARCHIVE for one name)."""
    out: dict[str, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("LIBARCHIVE.xattr."):
            try:
                name = os.fsdecode(urllib.parse.unquote_to_bytes(key[17:]))
                raw = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
            except (ValueError, binascii.Error):
                continue
            out.setdefault(name, raw)
        elif key.startswith("SCHILY.xattr."):
            out[key[13:]] = value.encode("utf-8", "surrogateescape")
    result: dict[str, bytes] = {}
    for name, raw in out.items():
        if name in _IGNORED_XATTRS:
            continue
        if name.startswith(_OVERLAY):
            name = _OVERLAY + "overlay." + name[len(_OVERLAY) :]
        result[name] = raw
    return result


def owner(m: tarfile.TarInfo) -> tuple[int, int]:
    if not (0 <= m.uid < 0xFFFFFFFF and 0 <= m.gid < 0xFFFFFFFF):
        raise ImageError(f"{show(m.name)} has an invalid owner {m.uid}:{m.gid}", hint=HOSTILE)
    return m.uid, m.gid


class MetaWriter:
    """Sets entry metadata; warns once when the target filesystem has no xattrs."""

    def __init__(self) -> None:
        self.warned_xattr = False

    def set_xattrs(self, target: int | str, values: dict[str, bytes], clear: bool) -> None:
        """Set on a descriptor, or on a path under /proc/self/fd without following it."""
        follow = isinstance(target, int)
        if clear:
            for name in os.listxattr(target, follow_symlinks=follow):
                if name not in _IGNORED_XATTRS and name not in values:
                    os.removexattr(target, name, follow_symlinks=follow)
        for name, value in values.items():
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if not self.warned_xattr:
                    log.warning("the target filesystem does not support xattr %s: not set", name)
                    self.warned_xattr = True

    def on_fd(self, fd: int, m: tarfile.TarInfo, clear: bool = False) -> None:
        """Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities)."""
        os.fchown(fd, *owner(m))
        os.fchmod(fd, m.mode & 0o7777)
        found = xattrs(m)
        if found or clear:
            self.set_xattrs(fd, found, clear)

    def at(self, pfd: int, name: str, m: tarfile.TarInfo, chmod: bool) -> None:
        """The same for symlinks and special files, which cannot be opened for writing."""
        os.chown(name, *owner(m), dir_fd=pfd, follow_symlinks=False)
        if chmod:
            os.chmod(name, m.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
        found = xattrs(m)
        if found:
            self.set_xattrs(f"/proc/self/fd/{pfd}/{name}", found, clear=False)
        os.utime(name, dir_fd=pfd, follow_symlinks=False, ns=times(m))
