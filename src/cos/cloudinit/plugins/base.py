"""What every plugin gets: the target root, dry-run, template data, and a runner."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.cloudinit import template
from cos.errors import CosError
from cos.fsutil import atomic_write, confine, regular_file_in_tree
from cos.system.release import read_os_release

log = logging.getLogger("cos.cloudinit")
MAX_FETCH_BYTES = 64 * 1024 * 1024  # a download (downloads:, user-data) larger than this fails
MAX_READ_BYTES = 16 * 1024 * 1024  # a target file read for an update (passwd, hosts…)


class PluginError(CosError):
    pass


@dataclass
class Context:
    root: Path = Path("/")
    dry_run: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)

    @functools.cached_property
    def os_release(self) -> dict[str, str]:
        """The target's os-release, read once for all the steps of a run."""
        return read_os_release(self.root)

    @property
    def live(self) -> bool:
        """True when acting on the running system (not a --root target)."""
        return self.root == Path("/")

    def path(self, p: str) -> Path:
        """Host path of an in-target path; symlinks are resolved inside the target."""
        if not p or not p.startswith("/") or p.strip("/") == "":
            raise PluginError(f"path {p!r} must be an absolute path below /")
        return confine(self.root, p)

    def render(self, text: str) -> str:
        """Render a template; text that is not a supported template is used as it is
        (as yip does), with a warning naming the construct."""
        try:
            return template.render(text, self.values)
        except template.TemplateError as exc:
            log.warning("template not rendered (%s); using the text as written", exc)
            return text

    def act(self, what: str) -> bool:
        """Record an action; False in dry-run mode (the caller then does nothing)."""
        self.plan.append(what)
        return not self.dry_run

    def read_text(self, p: str) -> str | None:
        """Text of an in-target regular file (None when absent); its symlinks resolve
        inside the target and a FIFO or device there is refused, never opened."""
        host = regular_file_in_tree(self.root, p)
        if host is None:
            other = confine(self.root, p)
            if other.exists() or other.is_symlink():
                raise PluginError(f"{p} in the target is not a regular file")
            return None
        fd = os.open(host, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PluginError(f"{p} in the target is not a regular file")
            raw = f.read(MAX_READ_BYTES + 1)
        if len(raw) > MAX_READ_BYTES:
            raise PluginError(f"{p} in the target is larger than {MAX_READ_BYTES} bytes")
        return raw.decode(errors="replace")

    def fetch(
        self,
        url: str,
        *,
        timeout: float = 30,
        limit: int = MAX_FETCH_BYTES,
        headers: dict[str, str] | None = None,
        low_port: bool = False,
    ) -> bytes:
        """The one way a plugin reaches the network: http(s) only, size-limited, never
        in dry-run. Raises PluginError with the reason. low_port: send from a source
        port below 1024 (plain http; metadata services that trust only root)."""
        if self.dry_run:
            raise PluginError(f"dry-run: {url} not fetched")
        if not url.startswith(("http://", "https://")):
            raise PluginError(f"unsupported URL {url!r} (http or https only)")
        import http.client  # the HTTP stack costs every stage's start; few steps fetch
        import urllib.error
        import urllib.request

        try:
            if low_port:
                data = _fetch_from_low_port(url, timeout, limit, headers or {})
            else:
                req = urllib.request.Request(url, headers=headers or {})
                with urllib.request.urlopen(req, timeout=timeout) as r:
                    data = bytes(r.read(limit + 1))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            raise PluginError(f"cannot fetch {url}: {exc}") from exc
        if len(data) > limit:
            raise PluginError(f"{url}: larger than {limit} bytes")
        return data

    def sh(self, command: str, check: bool = True) -> runner.Result:
        if self.dry_run:
            raise PluginError(f"dry-run: {command!r} not run")
        argv = ["/bin/sh", "-c", command]
        if not self.live:
            argv = ["chroot", str(self.root), *argv]
        return runner.run(argv, check=check, timeout=3600)

    def tool(
        self,
        argv: list[str],
        check: bool = True,
        input: str | None = None,
        secret_args: frozenset[int] = frozenset(),
    ) -> runner.Result:
        if self.dry_run:
            raise PluginError(f"dry-run: {argv[0]} not run")
        return runner.run(argv, check=check, input=input, secret_args=secret_args)


def _fetch_from_low_port(url: str, timeout: float, limit: int, headers: dict[str, str]) -> bytes:
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("a privileged source port needs a plain http URL")
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    last: OSError | None = None
    for port in range(1023, 511, -1):  # the first free privileged port
        conn = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=timeout, source_address=("", port)
        )
        try:
            conn.request("GET", path or "/", headers=headers)
            r = conn.getresponse()
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            return r.read(limit + 1)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise
            last = exc
        finally:
            conn.close()
    raise OSError(f"no privileged source port available ({last})")


class Errors:
    """Failures of a plugin's items, collected so one bad item does not stop the others;
    raise_any() then reports them all as one PluginError."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextlib.contextmanager
    def item(self, label: object) -> Iterator[None]:
        try:
            yield
        except (PluginError, OSError) as exc:
            self.messages.append(f"{label}: {exc}" if label is not None else str(exc))

    def raise_any(self) -> None:
        if self.messages:
            raise PluginError("; ".join(self.messages))


@dataclass(frozen=True)
class Plugin:
    name: str
    keys: tuple[str, ...]
    apply: Callable[[dict[str, Any], Context], None]
    supported: bool = True  # False: valid yip, reported as not supported when used


def write_file(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Replace path atomically; a crash leaves the old or the new content, never a part."""
    atomic_write(path, data, mode, uid, gid)
