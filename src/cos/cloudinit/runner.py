"""Running a stage: `.before`, the stage, `.after`; documents in load order, steps
in file order (reordered only by `after:`); conditions decide whether a step runs;
every plugin of a step runs even when another failed. Non-strict runs record errors
and go on; --strict makes the stage fail."""

from __future__ import annotations

import hashlib
import hmac
import logging
import platform
import re
import secrets
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cos.cloudinit.loader import Document
from cos.cloudinit.plugins.base import Context, PluginError
from cos.cloudinit.plugins.registry import PLUGINS
from cos.errors import CosError
from cos.fsutil import regular_file_in_tree, resolve_in_tree
from cos.system.release import read_os_release

log = logging.getLogger("cos.cloudinit")

_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "riscv64": "riscv64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


@dataclass
class StepResult:
    stage: str
    op: str
    status: str  # ran | skipped | failed
    detail: str = ""


@dataclass
class Summary:
    results: list[StepResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0

    def render(self) -> str:
        return (
            f"{self.count('ran')} ran, {self.count('skipped')} skipped, "
            f"{self.count('failed')} failed"
        )


def protected_id(machine_id: str) -> str:
    """yip's ProtectedID: HMAC-SHA256 keyed by the machine-id over "yip" (not the id itself)."""
    return hmac.new(machine_id.encode(), b"yip", hashlib.sha256).hexdigest() if machine_id else ""


def _target_line(root: Path, path: str) -> str:
    """First line of a small target file; its symlinks resolve inside the target (a
    link to /etc/hostname must not put the host's name into a --root tree)."""
    p = regular_file_in_tree(root, path)
    try:
        text = p.read_text(errors="replace")[:256] if p is not None else ""
    except OSError:
        return ""
    return text.strip().split("\n")[0]


def _machine_id(root: Path) -> str:
    return _target_line(root, "/etc/machine-id")


def template_values(root: Path) -> dict[str, Any]:
    """Data for templates: .Values (system facts), .MachineID, .UUID, .Random, .ProtectedID."""
    rel = read_os_release(root)
    machine_id = _machine_id(root)
    protected = protected_id(machine_id)
    random = "".join(secrets.choice("0123456789abcdefghijklmnopqrstuvwxyz") for _ in range(32))
    # Under --root the facts are the target's, where it has them.
    hostname = socket.gethostname() if root == Path("/") else _target_line(root, "/etc/hostname")
    uname = platform.uname()
    values = {
        "node": {"hostname": hostname, "machineid": machine_id},
        "os": {
            "name": rel.get("PRETTY_NAME", ""),
            "vendor": rel.get("ID", ""),
            "version": rel.get("VERSION_ID", ""),
            "release": rel.get("VERSION_CODENAME", ""),
        },
        "kernel": {
            "release": uname.release,
            "version": uname.version,
            "architecture": uname.machine,
        },
        "Random": random,
        "ProtectedID": protected,
    }
    return {
        "Values": values,
        "MachineID": machine_id,
        "UUID": str(uuid.uuid4()),
        "Random": random,
        "ProtectedID": protected,
    }


def _service_manager(root: Path) -> str | None:
    bins = ("sbin", "bin", "usr/sbin", "usr/bin")

    def has(name: str) -> bool:
        return any(resolve_in_tree(root, f"/{b}/{name}") is not None for b in bins)

    sd, rc = has("systemctl"), has("openrc")
    return "systemd" if sd and not rc else "openrc" if rc and not sd else None


def skip_reason(step: dict[str, Any], ctx: Context) -> str | None:
    """Why a step does not run (None: it runs). Same order as yip."""
    rel = ctx.os_release

    def regex(key: str, value: str) -> str | None:
        try:
            if re.search(step[key], value) is None:
                return f"{key} {step[key]!r} does not match {value!r}"
        except re.error as exc:
            return f"{key} {step[key]!r} is not a valid regular expression ({exc})"
        return None

    if step.get("node"):
        r = regex("node", socket.gethostname())
        if r:
            return r
    if step.get("if"):
        try:
            cond = ctx.render(step["if"])
        except PluginError as exc:
            return f"if: {exc}"
        if ctx.dry_run:
            ctx.plan.append(f"evaluate if: {cond} (taken as true)")
        elif ctx.sh(cond, check=False).returncode != 0:
            return f"if {step['if']!r} is false"
    for key, value in (
        ("only_os", rel.get("PRETTY_NAME", "")),
        ("only_os_version", rel.get("VERSION_ID", "")),
        ("only_arch", _ARCH.get(platform.machine(), platform.machine())),
    ):
        if step.get(key):
            r = regex(key, value)
            if r:
                return r
    if step.get("only_service_manager"):
        want = step["only_service_manager"].lower()
        if _service_manager(ctx.root) != want:
            return f"only_service_manager {want!r} does not match this system"
    for mode, paths in (step.get("if_files") or {}).items():
        exists = [ctx.path(p).exists() for p in paths]
        if (
            (mode == "any" and paths and not any(exists))
            or (mode == "all" and not all(exists))
            or (mode == "none" and any(exists))
        ):
            return f"if_files.{mode} not satisfied"
    return None


def _ordered(
    doc: Document, stage: str, steps: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(op name, step, unknown deps) in run order: file order, `after` moving steps later."""
    names = [s.get("name") or str(i) for i, s in enumerate(steps)]
    dup = len(set(names)) != len(names)
    ops = [f"{doc.name}.{n}.{i}" if dup else f"{doc.name}.{n}" for i, n in enumerate(names)]
    deps: list[set[str]] = []
    prev: str | None = None  # the nearest earlier step without `after`
    for i, s in enumerate(steps):
        if s.get("after"):
            deps.append({a.get("name", "") for a in s["after"]})
        else:
            deps.append({prev} if prev else set())
            prev = ops[i]
    done: set[str] = set()
    order: list[tuple[str, dict[str, Any], list[str]]] = []
    pending = list(range(len(steps)))
    while pending:
        pick = next((i for i in pending if deps[i] & set(ops) <= done), pending[0])
        pending.remove(pick)
        unknown = sorted(deps[pick] - set(ops) - done)
        order.append((ops[pick], steps[pick], unknown))
        done.add(ops[pick])
    return order


def _refresh_machine_id(ctx: Context) -> None:
    """An earlier step may have just written /etc/machine-id: templates see the new one."""
    mid = _machine_id(ctx.root)
    if ctx.values.get("MachineID", mid) != mid:
        protected = protected_id(mid)
        ctx.values["MachineID"] = mid
        ctx.values["ProtectedID"] = protected
        node = ctx.values.get("Values", {}).get("node")
        if isinstance(node, dict):
            node["machineid"] = mid


def run_step(stage: str, op: str, step: dict[str, Any], ctx: Context) -> StepResult:
    _refresh_machine_id(ctx)
    try:
        reason = skip_reason(step, ctx)
    except Exception as exc:  # a bad condition fails this step, never the stage
        log.error("  %s: condition: %s", op, exc)
        return StepResult(stage, op, "failed", f"condition: {exc}")
    if reason:
        log.info("  skip %s: %s", op, reason)
        return StepResult(stage, op, "skipped", reason)
    errors = []
    for plugin in PLUGINS:
        if not any(k in step and step[k] not in (None, {}, []) for k in plugin.keys):
            continue
        try:
            plugin.apply(step, ctx)
        except (CosError, OSError) as exc:
            errors.append(f"{plugin.name}: {exc}")
        except Exception as exc:  # recorded like any failure: one step never stops a stage
            errors.append(f"{plugin.name}: {type(exc).__name__}: {exc}")
    if errors:
        for e in errors:
            log.error("  %s: %s", op, e)
        return StepResult(stage, op, "failed", "; ".join(errors))
    log.info("  ran %s", op)
    return StepResult(stage, op, "ran")


def run_stage(
    stage: str,
    documents: list[Document],
    ctx: Context,
    late: list[Document] | None = None,
) -> Summary:
    """Run STAGE.before, STAGE, STAGE.after over documents, then over late ones (the
    kernel cmdline), as Elemental does."""
    summary = Summary()
    for group in (documents, late or []):
        _run_group(stage, group, ctx, summary)
    return summary


def _run_group(stage: str, documents: list[Document], ctx: Context, summary: Summary) -> None:
    for name in (f"{stage}.before", stage, f"{stage}.after"):
        for doc in documents:
            steps = doc.stages.get(name) or []
            if not steps:
                continue
            log.info("stage %s: %s", name, doc.source)
            for op, step, unknown in _ordered(doc, name, steps):
                if unknown:
                    log.warning("  %s: after names unknown steps %s", op, ", ".join(unknown))
                summary.results.append(run_step(name, op, step, ctx))
