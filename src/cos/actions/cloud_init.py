"""cos cloud-init / cos run-stage: load cloud-configs and run a stage over them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cos.cloudinit.loader import LoadResult, load_cmdline, load_source
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import Summary, run_stage, template_values
from cos.cloudinit.schema import json_schema
from cos.config import Config
from cos.errors import CosError, ExitCode, UsageError
from cos.log import log

DEFAULT_PATHS = ["/system/oem", "/oem", "/usr/local/cloud-config"]


class StageFailed(CosError):
    exit_code = ExitCode.STAGE


@dataclass
class StageRequest:
    stage: str
    sources: list[str] = field(default_factory=list)
    root: Path = Path("/")
    dry_run: bool = False
    strict: bool = False
    cmdline: str | None = None  # kernel cmdline to read dot-notation and cos.setup= from


def print_schema() -> None:
    print(json.dumps(json_schema(), indent=2))


def _setup_sources(cmdline: str) -> list[str]:
    out = []
    for tok in cmdline.split():
        for prefix in ("cos.setup=", "elemental.setup="):
            if tok.startswith(prefix):
                out.append(tok[len(prefix) :])
    return out


def default_sources(cfg: Config, root: Path, cmdline: str) -> list[str]:
    paths = [*DEFAULT_PATHS, *cfg.cloud_init_paths]
    local = [str(root / p.lstrip("/")) for p in paths if (root / p.lstrip("/")).exists()]
    return local + _setup_sources(cmdline)


def run(req: StageRequest) -> Summary:
    if not req.stage or any(c.isspace() for c in req.stage):
        raise UsageError(f"invalid stage name {req.stage!r}", hint="e.g. boot, network, rootfs")
    if not req.root.is_dir():
        raise UsageError(f"--root {req.root} is not a directory")
    loaded = LoadResult()
    for src in req.sources:
        loaded.extend(load_source(src))
    late = LoadResult()
    if req.cmdline and req.root == Path("/"):
        late = load_cmdline(req.cmdline)
        loaded.errors += late.errors
    for err in loaded.errors:
        log.error("cloud-config: %s", err)
    ctx = Context(root=req.root, dry_run=req.dry_run, values=template_values(req.root))
    summary = run_stage(req.stage, loaded.documents, ctx, late.documents)
    if req.dry_run:
        for line in ctx.plan:
            print(f"would {line}")
    log.info(
        "stage %s: %d document(s), %s%s",
        req.stage,
        len(loaded.documents),
        summary.render(),
        f", {len(loaded.errors)} invalid document(s)" if loaded.errors else "",
    )
    if req.strict and (summary.failed or loaded.errors):
        first = next((r for r in summary.results if r.status == "failed"), None)
        detail = f"{first.op}: {first.detail}" if first else str(loaded.errors[0])
        raise StageFailed(
            f"stage {req.stage} failed: {detail}",
            hint="see the errors above; without --strict errors are reported and the stage goes on",
        )
    return summary


def kernel_cmdline() -> str:
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""
