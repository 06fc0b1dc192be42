"""Reading and writing the target's passwd, group and shadow files directly.

Acting on the files (not the host's NSS) is what lets the users plugin work on a
--root target as well as on the running system.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from cos.cloudinit.plugins.base import Context, PluginError, write_file


@dataclass
class Table:
    path: Path
    rows: list[list[str]]
    width: int

    @classmethod
    def read(cls, ctx: Context, name: str, width: int) -> Table:
        p = ctx.path(name)
        rows = []
        text = ctx.read_text(name)
        if text is not None:
            for line in text.splitlines():
                if line.strip() and not line.startswith("#"):
                    f = line.split(":")
                    rows.append(f + [""] * (width - len(f)))
        return cls(p, rows, width)

    def find(self, name: str) -> list[str] | None:
        return next((r for r in self.rows if r[0] == name), None)

    def write(self) -> None:
        mode, uid, gid = 0o644, 0, 0
        if self.path.exists():
            st = self.path.stat()
            mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        elif self.path.name in ("shadow", "gshadow"):
            mode = 0o640
        text = "".join(":".join(r) + "\n" for r in self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file(self.path, text.encode(), mode, uid, gid)


def lookup_uid(ctx: Context, name: str) -> int:
    if name.isdigit():
        return int(name)
    row = Table.read(ctx, "/etc/passwd", 7).find(name)
    if row is None:
        raise PluginError(f"user {name!r} does not exist in {ctx.root / 'etc/passwd'}")
    return int(row[2])


def lookup_gid(ctx: Context, name: str) -> int:
    if name.isdigit():
        return int(name)
    row = Table.read(ctx, "/etc/group", 4).find(name)
    if row is None:
        raise PluginError(f"group {name!r} does not exist in {ctx.root / 'etc/group'}")
    return int(row[2])


def owner_of(ctx: Context, ownerstring: str) -> tuple[int, int]:
    """'user' or 'user:group' resolved in the target; group defaults to the user's."""
    user, _, group = ownerstring.partition(":")
    uid = lookup_uid(ctx, user)
    if group:
        return uid, lookup_gid(ctx, group)
    row = Table.read(ctx, "/etc/passwd", 7).find(user)
    return uid, int(row[3]) if row else uid
