"""cos logs: what cos did in a boot (the boot trail), this one or one of the last kept."""

from __future__ import annotations

import json

from cos.config import Config
from cos.errors import StateError
from cos.system.installed import Installed
from cos.system.trail import boots, render_record


def show_logs(
    cfg: Config,
    *,
    boot: int | None = None,
    as_json: bool = False,
    installed: Installed | None = None,
) -> int:
    inst = installed or Installed.running(cfg.layout.oem_mount)
    records = boots(inst, cfg.layout.persistent_mount, cfg.labels.persistent)
    if boot is not None:
        records = [r for r in records if r.get("boot") == boot]
        if not records:
            raise StateError(
                f"no record of boot {boot}",
                hint="`cos logs` shows the last boot; the last 20 boots are kept",
            )
    if not records:
        raise StateError(
            "no boot trail here (not a system booted by cos, or its first boot)",
            hint="the trail is written by the boot stages of an installed system",
        )
    record = records[-1]
    print(json.dumps(record, indent=2) if as_json else render_record(record))
    return 0
