"""commands: each a `sh -c` in the target (chroot for --root), templated first."""

from __future__ import annotations

from typing import Any

from cos.cloudinit.plugins.base import Context, PluginError
from cos.errors import ToolError


def commands(step: dict[str, Any], ctx: Context) -> None:
    errors = []
    for cmd in step.get("commands") or []:
        try:
            text = ctx.render(cmd)
            if not ctx.act(f"run: {text}"):
                continue
            ctx.sh(text)
        except ToolError as exc:
            detail = exc.stderr.strip().splitlines()[-1] if exc.stderr.strip() else ""
            errors.append(
                f"command {cmd!r} exited {exc.returncode}" + (f": {detail}" if detail else "")
            )
        except PluginError as exc:
            errors.append(f"command {cmd!r}: {exc}")
    if errors:
        raise PluginError("; ".join(errors))
