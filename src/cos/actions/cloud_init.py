"""cos cloud-init / cos run-stage: load cloud-configs and run a stage over them.

Every document that loads runs; the exit code then tells whether all was well:
STAGE when a document was refused or a step failed (the rest ran). At boot the
setup units run a stage the same way, so a failure marks the unit failed without
stopping the boot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from cos.cloudinit.hooks import load_sources, record_stage, report, run_sources
from cos.cloudinit.runner import Summary
from cos.cloudinit.schema import json_schema
from cos.cloudinit.sources import default_sources, kernel_cmdline
from cos.config import Config
from cos.errors import ConfigError, CosError, ExitCode, UsageError
from cos.log import log
from cos.system.installed import Installed
from cos.system.trail import Trail


class StageFailed(CosError):
    exit_code = ExitCode.STAGE


@dataclass(frozen=True, kw_only=True)
class StageRequest:
    stage: str
    sources: list[str] = field(default_factory=list)
    root: Path = Path("/")
    dry_run: bool = False
    strict: bool = False  # warnings (unknown keys, skipped files) refuse their document
    cmdline: str | None = None  # kernel cmdline to read dot-notation and cos.setup= from


def print_schema() -> None:
    print(json.dumps(json_schema(), indent=2))


def validate(sources: list[str]) -> int:
    """Check cloud-configs without running anything: every warning is an error."""
    loaded = load_sources(sources, strict=True)
    for err in loaded.errors:
        log.error("cloud-config: %s", err)
    if loaded.errors:
        raise ConfigError(
            f"{len(loaded.errors)} problem(s) in the cloud-configs; the first: {loaded.errors[0]}",
            hint="fix the keys named above; `cos cloud-init --schema` lists the valid ones",
        )
    log.info("%d document(s) valid", len(loaded.documents))
    return len(loaded.documents)


def run(req: StageRequest, trail: Trail | None = None) -> Summary:
    """Run the stage; with a trail (the running system's boot stages), record it."""
    if not req.stage or any(c.isspace() for c in req.stage):
        raise UsageError(f"invalid stage name {req.stage!r}", hint="e.g. boot, network, rootfs")
    if not req.root.is_dir():
        raise UsageError(f"--root {req.root} is not a directory")
    started = time.monotonic()
    summary, loaded, ctx = run_sources(
        req.stage,
        req.sources,
        req.root,
        dry_run=req.dry_run,
        strict=req.strict,
        cmdline=req.cmdline,
    )
    if req.dry_run:
        for line in ctx.plan:
            print(f"would {line}")
    report(req.stage, loaded, summary)
    if trail is not None:
        record_stage(trail, req.stage, time.monotonic() - started, loaded, summary)
    if summary.failed or loaded.errors:
        first = next((r for r in summary.results if r.status == "failed"), None)
        detail = f"{first.op}: {first.detail}" if first else f"invalid: {loaded.errors[0]}"
        raise StageFailed(
            f"stage {req.stage} failed: {detail}",
            hint="see the errors above; the other documents and steps ran",
        )
    return summary


def run_system_stage(
    cfg: Config, stage: str, root: Path, *, dry_run: bool = False, strict: bool = False
) -> Summary:
    """cos run-stage: a stage over the system's own cloud-configs and command line.
    At boot (the running system, for real) the outcome goes into the boot trail."""
    cmdline = kernel_cmdline()
    trail = None
    if root == Path("/") and not dry_run:
        trail = Trail.of(Installed.running(cfg.layout.oem_mount), cfg.layout.persistent_mount)
    return run(
        StageRequest(
            stage=stage,
            sources=default_sources(cfg, root, cmdline),
            root=root,
            dry_run=dry_run,
            strict=strict,
            cmdline=cmdline,
        ),
        trail,
    )
