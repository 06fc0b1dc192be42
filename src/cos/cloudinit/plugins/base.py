"""What every plugin gets: the target root, dry-run, template data, and a runner."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.cloudinit import template
from cos.errors import CosError
from cos.fsutil import inside


class PluginError(CosError):
    pass


@dataclass
class Context:
    root: Path = Path("/")
    dry_run: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        """True when acting on the running system (not a --root target)."""
        return self.root == Path("/")

    def path(self, p: str) -> Path:
        """Host path of an in-target path; refuses to leave the target root."""
        if not p or not p.startswith("/"):
            raise PluginError(f"path {p!r} must be absolute")
        return inside(self.root, p)

    def render(self, text: str) -> str:
        try:
            return template.render(text, self.values)
        except template.TemplateError as exc:
            raise PluginError(str(exc)) from exc

    def act(self, what: str) -> bool:
        """Record an action; False in dry-run mode (the caller then does nothing)."""
        self.plan.append(what)
        return not self.dry_run

    def sh(self, command: str, check: bool = True) -> runner.Result:
        argv = ["/bin/sh", "-c", command]
        if not self.live:
            argv = ["chroot", str(self.root), *argv]
        return runner.run(argv, check=check, timeout=3600)

    def tool(self, argv: list[str], check: bool = True, input: str | None = None) -> runner.Result:
        return runner.run(argv, check=check, input=input)


@dataclass(frozen=True)
class Plugin:
    name: str
    keys: tuple[str, ...]
    apply: Callable[[dict[str, Any], Context], None]


def write_file(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Write data to path (following yip: parents created, content replaced)."""
    tmp = path.with_name(f".{path.name}.cos-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    if uid != -1 or gid != -1:
        os.chown(tmp, uid, gid)
    os.replace(tmp, path)
