"""Which snapshots an upgrade keeps: the one to fall back to, then the newest."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Which snapshots stay, which go, and what the new one falls back to."""

    fallback: int | None
    keep: list[int]  # existing snapshots kept beside the new one
    drop: list[int]


def plan_snapshots(
    existing: list[int], active: int | None, booted: int | None, max_snaps: int
) -> Plan:
    """Keep the snapshot to fall back to (the one running), then the newest, up to max."""
    fallback = booted if booted in existing else active
    order = [n for n in ([fallback] if fallback is not None else [])]
    order += [n for n in sorted(existing, reverse=True) if n not in order]
    if booted in existing and booted not in order[: max_snaps - 1]:
        order.remove(booted)
        order.insert(0, booted)
    keep = order[: max(max_snaps - 1, 0)]
    if booted is not None and booted in existing and booted not in keep:
        keep.append(booted)  # never remove what is running
    return Plan(fallback, keep, [n for n in existing if n not in keep])
