"""Action hooks: cloud-init stages an action runs at fixed points.

before-/after-<action> run on the running system; after-<action>-chroot runs inside
the tree being installed, with /dev, /proc and /sys bound in so that commands behave
as they would on the booted system (on a build machine, in a sandbox:
cos.cloudinit.sandbox). Hook errors are reported, not fatal, as in
Elemental: a hook can make a system unbootable, which boot assessment then catches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cos.cloudinit.loader import LoadResult, load_cmdline, load_source
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import Summary, run_stage, template_values
from cos.disk.mount import mounted
from cos.log import log
from cos.system.trail import StepOutcome, Trail


def load_sources(sources: list[str], *, strict: bool = False) -> LoadResult:
    loaded = LoadResult()
    for src in sources:
        loaded.extend(load_source(src, strict=strict))
    return loaded


def run_sources(
    stage: str,
    sources: list[str],
    root: Path = Path("/"),
    *,
    dry_run: bool = False,
    strict: bool = False,
    cmdline: str | None = None,
) -> tuple[Summary, LoadResult, Context]:
    """Run one stage over the documents of sources (and, on the running system, the
    kernel command line's dot-notation document, run last). Invalid documents are
    logged and left out; the rest run. Never raises for a cloud-config problem."""
    loaded = load_sources(sources, strict=strict)
    late = LoadResult()
    if cmdline and root == Path("/"):
        late = load_cmdline(cmdline, strict=strict)
        loaded.errors += late.errors
        loaded.warnings += late.warnings
    for err in loaded.errors:
        log.error("cloud-config: %s", err)
    ctx = Context(root=root, dry_run=dry_run, values=template_values(root))
    return run_stage(stage, loaded.documents, ctx, late.documents), loaded, ctx


def report(stage: str, loaded: LoadResult, summary: Summary) -> None:
    log.info(
        "stage %s: %d document(s), %s%s%s",
        stage,
        len(loaded.documents),
        summary.render(),
        f", {len(loaded.errors)} invalid document(s)" if loaded.errors else "",
        f", {len(loaded.warnings)} warning(s)" if loaded.warnings else "",
    )


def run_hook(name: str, sources: list[str], root: Path = Path("/")) -> None:
    if not sources:
        return
    summary, loaded, _ = run_sources(name, sources, root)
    report(name, loaded, summary)
    if summary.failed:
        log.warning("hook %s: %s", name, summary.render())


@contextmanager
def _chroot_mounts(tree: Path) -> Iterator[None]:
    with ExitStack() as stack:
        for d in ("dev", "proc", "sys"):
            if (tree / d).is_dir() and not (tree / d).is_symlink():
                stack.enter_context(mounted(Path(f"/{d}"), tree / d, "bind"))
        yield


def run_chroot_hook(name: str, sources: list[str], tree: Path) -> None:
    """Run a chroot hook over the tree's own /system/oem plus the given sources."""
    own = tree / "system/oem"
    all_sources = ([str(own)] if own.is_dir() else []) + sources
    if not all_sources:
        return
    with _chroot_mounts(tree):
        run_hook(name, all_sources, tree)


def record_stage(
    trail: Trail, stage: str, seconds: float, loaded: LoadResult, summary: Summary
) -> None:
    """A stage's outcome into the boot trail (cos logs)."""
    trail.record_stage(
        stage,
        seconds=seconds,
        documents=sorted({d.source for d in loaded.documents}),
        steps=[StepOutcome(r.op, r.status, r.detail) for r in summary.results],
        invalid=[str(e) for e in loaded.errors],
    )
