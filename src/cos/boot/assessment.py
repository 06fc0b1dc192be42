"""Boot selection and boot assessment variables in the grubenv on COS_OEM.

The toolkit writes these variables atomically (temp + fsync + rename); GRUB writes
back only `cos_tries`, in place, once per boot of a trial snapshot:

    passive_snaps  kept snapshots that are not active, newest first (menu entries)
    cos_trial      snapshot on trial: switched to by an upgrade, not yet confirmed good
    cos_tries      boots of the trial snapshot left; GRUB counts it down, and at 0
                   boots `passive<cos_fallback>` instead
    cos_fallback   the snapshot GRUB falls back to (the one the upgrade ran from)

A trial ends in one of two ways: the mark-good unit confirms the trial snapshot after
multi-user (and the checks in /usr/libexec/cos-checks) succeeded, or the system comes
up in the fallback with no tries left, records the failure and rolls back. Every
upgrade rewrites all four variables, so counters of an earlier trial never leak into
the next (stale counters must not make a good upgrade look failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cos.boot import grubenv

ENV_FILE = "grubenv"
PASSIVE = "passive_snaps"
TRIAL = "cos_trial"
TRIES = "cos_tries"
FALLBACK = "cos_fallback"
MAX_ATTEMPTS = 9  # GRUB has no arithmetic: grub.cfg counts down 9…1 by string compare


@dataclass(frozen=True)
class Trial:
    snapshot: int
    tries_left: int
    fallback: int | None


def env_path(oem_dir: Path) -> Path:
    return Path(oem_dir) / ENV_FILE


def _int(text: str | None) -> int | None:
    t = text.strip() if text is not None else ""
    return int(t) if t.isascii() and t.isdecimal() else None


def read_trial(oem_dir: Path) -> Trial | None:
    p = env_path(oem_dir)
    env = grubenv.read(p) if p.exists() else {}
    n = _int(env.get(TRIAL))
    if n is None:
        return None
    return Trial(n, _int(env.get(TRIES)) or 0, _int(env.get(FALLBACK)))


def check_env(oem_dir: Path) -> None:
    """Before an action writes anything: the grubenv it will update is readable
    (a damaged one is refused with a repair hint, never half-updated later)."""
    p = env_path(oem_dir)
    if p.exists() or p.is_symlink():
        grubenv.read(p)


def passive_list(oem_dir: Path) -> list[int]:
    p = env_path(oem_dir)
    env = grubenv.read(p) if p.exists() else {}
    return [int(x) for x in env.get(PASSIVE, "").split() if x.isascii() and x.isdecimal()]


def _passive(passive: Sequence[int]) -> str:
    return " ".join(str(n) for n in sorted(set(passive), reverse=True))


def start_trial(
    oem_dir: Path, snapshot: int, fallback: int | None, attempts: int, passive: Sequence[int]
) -> None:
    """Written before the switch: a crash right after it still has a fallback ready."""
    attempts = max(1, min(attempts, MAX_ATTEMPTS))
    values = {PASSIVE: _passive(passive), TRIAL: str(snapshot), TRIES: str(attempts)}
    if fallback is not None:
        values[FALLBACK] = str(fallback)
    grubenv.update(env_path(oem_dir), values, unset=() if fallback is not None else (FALLBACK,))


def end_trial(oem_dir: Path, passive: Sequence[int] | None = None) -> None:
    values = {PASSIVE: _passive(passive)} if passive is not None else {}
    grubenv.update(env_path(oem_dir), values, unset=(TRIAL, TRIES, FALLBACK))


def set_passive(oem_dir: Path, passive: Sequence[int]) -> None:
    grubenv.update(env_path(oem_dir), {PASSIVE: _passive(passive)})


def set_next_entry(oem_dir: Path, entry: str) -> None:
    grubenv.update(env_path(oem_dir), {"next_entry": entry})


def fell_back(trial: Trial | None, mode: str, booted: int | None) -> bool:
    """Did GRUB give up on the trial snapshot and boot its fallback?"""
    return (
        trial is not None
        and trial.tries_left == 0
        and mode == "passive"
        and booted is not None
        and booted != trial.snapshot
    )
