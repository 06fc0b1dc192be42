"""What every plugin gets: the target root, dry-run, template data, and a runner."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.cloudinit import template
from cos.errors import CosError
from cos.fsutil import atomic_write, confine
from cos.system.release import read_os_release

log = logging.getLogger("cos.cloudinit")


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

    def sh(self, command: str, check: bool = True) -> runner.Result:
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
        return runner.run(argv, check=check, input=input, secret_args=secret_args)


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
