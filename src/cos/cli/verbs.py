"""The verbs: each is its name, help and arguments above the handler that runs it.

A handler only turns parsed arguments into the action's request and calls the
action. Actions are imported when their verb runs, so `cos --help` and the
initrd's `cos mount` do not load what they do not use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cos.cli.table import (
    CLOUD_INIT,
    DEVICE,
    DRY_RUN,
    IMAGE,
    IMAGE_SOURCE,
    OUTPUT,
    REBOOT,
    STRICT,
    TLS_VERIFY,
    VERBS,
    arg,
    build_parser,
    installed,
    one_of,
    size_mib,
    verb,
)
from cos.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from cos.config import Config

__all__ = ["VERBS"]  # filled by the @verb entries below


@verb(
    "init",
    "install the toolkit's features into an image (image build)",
    arg("features", nargs="*", metavar="FEATURE", help="features (default: all)"),
    arg("--force", action="store_true", help="run even outside an image build"),
    arg("--list", action="store_true", help="list the features and exit"),
)
def _init(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.init import init_image
    from cos.system.features import FEATURES

    if args.list:
        for f in FEATURES.values():
            print(f"{f.name:20} {f.summary}")
        return 0
    init_image(args.features, force=args.force)
    return 0


@verb(
    "build-disk",
    "turn an image into a bootable disk",
    IMAGE,
    OUTPUT,
    CLOUD_INIT,
    arg(
        "--type",
        choices=["raw", "qcow2", "vhd", "gce"],
        default="raw",
        help="raw (default), qcow2, vhd (Azure fixed VHD), gce (disk.raw in a tar.gz)",
    ),
    arg("--size", type=size_mib, help="total disk size (default: fit the layout)"),
    arg("--recovery-system", metavar="REF", help="image for recovery (default: IMAGE)"),
    arg(
        "--expandable",
        action="store_true",
        help="a small disk: state and persistent partitions are made on first boot, filling"
        " the disk, and the system is deployed from recovery",
    ),
    arg(
        "--deploy-command",
        metavar="CMD",
        help="with --expandable: what deploys the system on first boot (default: cos reset)",
    ),
    IMAGE_SOURCE,
    events=True,
)
def _build_disk(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.build_disk import BuildDiskRequest, build_disk
    from cos.disk.formats import DiskType

    req = BuildDiskRequest(
        image=args.image,
        output=args.output,
        cloud_init=args.cloud_init,
        disk_type=DiskType(args.type),
        size_mib=args.size,
        recovery_image=args.recovery_system,
        expandable=args.expandable,
        deploy_command=args.deploy_command,
    )
    build_disk(req, cfg)
    return 0


@verb(
    "build-iso",
    "live and installation media (hybrid ISO, BIOS + EFI)",
    IMAGE,
    OUTPUT,
    CLOUD_INIT,
    arg("--label", default="COS_LIVE", help="ISO volume label (default COS_LIVE)"),
    arg("--overlay-iso", type=Path, metavar="DIR", help="extra files for the ISO root"),
    IMAGE_SOURCE,
    events=True,
)
def _build_iso(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.build_iso import BuildIsoRequest, build_iso

    req = BuildIsoRequest(
        image=args.image,
        output=args.output,
        cloud_init=args.cloud_init,
        label=args.label,
        overlay=args.overlay_iso,
    )
    build_iso(req, cfg)
    return 0


@verb(
    "mount",
    "apply the immutable layout (run from the initrd)",
    arg("--mode", choices=["active", "passive", "recovery", "live"], required=True),
    arg("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS),
    arg("--oem-label", help="filesystem label of COS_OEM (from the kernel cmdline)"),
    arg("--persistent-label", help="filesystem label of COS_PERSISTENT"),
    arg("--no-stages", action="store_true", help="skip the rootfs/initramfs stages"),
)
def _mount(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.mount import mount_layout

    mount_layout(
        cfg,
        mode=args.mode,
        root=args.root,
        oem_label=args.oem_label,
        persistent_label=args.persistent_label,
        stages=not args.no_stages,
    )
    return 0


@verb(
    "cloud-init",
    "run a stage of cloud-configs (yip compatible)",
    arg("sources", nargs="*", metavar="PATH", help="file, directory, URL or -"),
    arg("-s", "--stage", default="default", help="stage to run (default: default)"),
    arg("--root", type=Path, default=Path("/"), help="act on this target root"),
    DRY_RUN,
    STRICT,
    arg("--schema", action="store_true", help="print the JSON Schema and exit"),
    arg(
        "--validate",
        action="store_true",
        help="check the cloud-configs, run nothing; warnings are errors",
    ),
)
def _cloud_init(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions import cloud_init

    if args.schema:
        cloud_init.print_schema()
        return 0
    if not args.sources:
        raise UsageError("no cloud-config given", hint="cos cloud-init [-s STAGE] PATH…")
    if args.validate:
        cloud_init.validate(args.sources)
        return 0
    cloud_init.run(
        cloud_init.StageRequest(
            stage=args.stage,
            sources=args.sources,
            root=args.root,
            dry_run=args.dry_run,
            strict=args.strict,
        )
    )
    return 0


@verb(
    "run-stage",
    "run a stage from the default cloud-config paths",
    arg("stage", metavar="STAGE"),
    arg("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS),
    DRY_RUN,
    STRICT,
)
def _run_stage(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions import cloud_init

    cloud_init.run_system_stage(
        cfg, args.stage, args.root, dry_run=args.dry_run, strict=args.strict
    )
    return 0


@verb(
    "install",
    "install an image onto a disk (from live or recovery)",
    arg("device", type=Path, metavar="DEVICE", help="block device, e.g. /dev/vdb"),
    arg("--system", metavar="REF", help="image to install (default on live media: their image)"),
    CLOUD_INIT,
    arg("--recovery-system", metavar="REF", help="image for recovery (default: REF)"),
    arg("--force", action="store_true", help="overwrite an existing installation"),
    one_of(
        arg("--reboot", action="store_const", const="reboot", dest="after"),
        arg("--poweroff", action="store_const", const="poweroff", dest="after"),
    ),
    IMAGE_SOURCE,
    events=True,
)
def _install(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.install import InstallRequest, install

    req = InstallRequest(
        device=args.device,
        system=args.system,
        cloud_init=args.cloud_init,
        recovery_system=args.recovery_system,
        force=args.force,
        after=args.after,
    )
    install(req, cfg)
    return 0


@verb(
    "live-install",
    "on live media: run the install: section of the cloud-config",
    events=True,
)
def _live_install(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.install import auto_install

    auto_install(cfg)
    return 0


@verb(
    "upgrade",
    "pull a new image and boot it next (A/B, atomic)",
    arg("--system", metavar="REF", help="image (default: the recorded source)"),
    arg("--force", action="store_true", help="upgrade even to the same digest"),
    arg("--recovery", action="store_true", help="upgrade the recovery system instead"),
    arg("--bootloader", action="store_true", help="also reinstall GRUB from the new image"),
    one_of(
        arg("--check", action="store_true", help="is there an update? exit 0: yes, 9: no"),
        arg("--download-only", action="store_true", help="build the next snapshot, staged"),
        arg("--apply", action="store_true", help="switch to the staged snapshot"),
    ),
    arg("--offline", action="store_true", help="--apply without the registry's digest check"),
    REBOOT,
    IMAGE_SOURCE,
    DEVICE,
    events=True,
)
def _upgrade(args: argparse.Namespace, cfg: Config) -> int:
    _upgrade_flags(args)
    if args.recovery:
        return _recovery(args.system, args, cfg)
    from cos.actions import upgrade as action

    req = action.UpgradeRequest(
        system=args.system,
        force=args.force,
        reboot=args.reboot,
        installed=installed(args, cfg),
        bootloader=args.bootloader,
        download_only=args.download_only,
        offline=args.offline,
    )
    if args.check:
        return ExitCode.OK if action.check(req, cfg) else ExitCode.NO_UPDATE
    if args.apply:
        action.apply(req, cfg)
    else:
        action.upgrade(req, cfg)
    return 0


def _upgrade_flags(args: argparse.Namespace) -> None:
    """Flags that do not go together: each part of a split upgrade takes its own."""
    part = next((f for f in ("check", "download_only", "apply") if getattr(args, f)), None)
    flag = f"--{part.replace('_', '-')}" if part else ""
    misfits = {
        "recovery": part is not None,
        "offline": part != "apply",
        "system": part == "apply",
        "reboot": part in ("check", "download_only"),
        "bootloader": part in ("check", "download_only"),
    }
    bad = [f"--{k}" for k, on in misfits.items() if on and getattr(args, k)]
    if bad:
        raise UsageError(
            f"{bad[0]} does not go with {flag or 'a full upgrade'}",
            hint="--offline goes with --apply; --reboot and --bootloader with the switch"
            " (--apply or a full upgrade); --apply takes the staged snapshot's source",
        )


@verb(
    "upgrade-recovery",
    "replace the recovery system atomically",
    arg("--recovery-system", metavar="REF", help="image (default: the recorded one)"),
    arg("--force", action="store_true", help="replace even with the same digest"),
    IMAGE_SOURCE,
    DEVICE,
    events=True,
)
def _upgrade_recovery(args: argparse.Namespace, cfg: Config) -> int:
    return _recovery(args.recovery_system, args, cfg)


def _recovery(ref: str | None, args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.upgrade_recovery import RecoveryRequest, upgrade_recovery

    req = RecoveryRequest(system=ref, force=args.force, installed=installed(args, cfg))
    upgrade_recovery(req, cfg)
    return 0


@verb(
    "rollback",
    "make a kept snapshot the one that boots",
    arg("snapshot", nargs="?", type=int, metavar="N", help="default: the newest other"),
    arg("--once", action="store_true", help="only for the next boot (next_entry)"),
    REBOOT,
    DEVICE,
)
def _rollback(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.rollback import RollbackRequest, rollback

    req = RollbackRequest(
        snapshot=args.snapshot,
        once=args.once,
        reboot=args.reboot,
        installed=installed(args, cfg),
    )
    rollback(req, cfg)
    return 0


@verb(
    "reset",
    "from recovery: redeploy the system as freshly installed",
    arg("--system", metavar="REF", help="image (default: the recovery image)"),
    arg("--reset-persistent", action="store_true", help="also wipe COS_PERSISTENT"),
    arg("--reset-oem", action="store_true", help="also remove the OEM cloud-configs"),
    REBOOT,
    IMAGE_SOURCE,
    DEVICE,
    events=True,
)
def _reset(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.reset import ResetRequest, reset

    req = ResetRequest(
        system=args.system,
        reset_persistent=args.reset_persistent,
        reset_oem=args.reset_oem,
        reboot=args.reboot,
        installed=installed(args, cfg),
    )
    reset(req, cfg)
    return 0


@verb(
    "boot-assessment",
    "confirm or fail a trial boot (run by systemd)",
    arg("--mark-good", action="store_true", help="run the checks, confirm the trial"),
    arg("--deadline", action="store_true", help=argparse.SUPPRESS),
    arg("--status", action="store_true", help="then print `cos status` instead of the decision"),
    DEVICE,
)
def _boot_assessment(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.assess import assess

    inst = installed(args, cfg)
    decided = assess(cfg, mark_good=args.mark_good, installed=inst, deadline=args.deadline)
    if not args.status:
        print(decided)
        return 0
    from cos.actions.status import show_status

    return show_status(cfg, as_json=False, installed=inst)


@verb(
    "pull-image",
    "unpack an image into a directory",
    IMAGE,
    arg("dest", type=Path, metavar="DIR", help="new (or empty) directory"),
    IMAGE_SOURCE,
    events=True,
)
def _pull_image(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.images import PullRequest, pull_image

    pull_image(PullRequest(image=args.image, dest=args.dest), cfg)
    return 0


@verb(
    "inspect",
    "digest, layers, labels and OS of an image",
    IMAGE,
    arg("--json", action="store_true", help="machine-readable output"),
    IMAGE_SOURCE,
)
def _inspect(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.images import inspect_image

    inspect_image(args.image, cfg, as_json=args.json)
    return 0


@verb(
    "rechunk",
    "rewrite an image into layers per package, so updates pull only what changed",
    arg("source", metavar="SOURCE", help="docker://…, host/repo:tag, oci:DIR[:tag], dir:PATH"),
    arg("dest", metavar="DEST", help="oci:DIR[:tag], oci-archive:FILE[:tag], host/repo:tag"),
    arg(
        "--max-layers",
        type=int,
        default=64,
        metavar="N",
        help="at most N layers (default 64)",
    ),
    arg("--prev", metavar="REF", help="the previous release: keep its grouping where it fits"),
    IMAGE_SOURCE,
)
def _rechunk(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.rechunk import RechunkRequest, rechunk_image

    req = RechunkRequest(args.source, args.dest, max_layers=args.max_layers, prev=args.prev)
    rechunk_image(req, cfg)
    return 0


@verb(
    "sign",
    "sign an image (cosign-compatible, key-based)",
    arg("image", metavar="IMAGE", help="host/repo:tag or oci:DIR[:tag]"),
    arg("--key", required=True, type=Path, metavar="PATH", help="cosign.key"),
    arg(
        "-a",
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra signed claim (repeatable)",
    ),
    arg(
        "--bundle-format",
        choices=("old", "new"),
        default="old",
        help="old: the .sig tag (default; read by every cos and cosign); new: a Sigstore"
        " bundle stored as an OCI referrer, as cosign v3 writes",
    ),
    TLS_VERIFY,
)
def _sign(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.sign import SignRequest, sign_image

    notes = {}
    for a in args.annotation:
        k, sep, v = a.partition("=")
        if not sep or not k:
            raise UsageError(f"annotation {a!r} is not KEY=VALUE", hint="e.g. -a build=42")
        notes[k] = v
    req = SignRequest(args.image, args.key, notes, args.bundle_format)
    sign_image(req, cfg)
    return 0


@verb(
    "generate-key-pair",
    "write cosign.key and cosign.pub",
    arg(
        "--output-key-prefix",
        type=Path,
        default=Path("cosign"),
        metavar="PREFIX",
        help="file name prefix (default: cosign)",
    ),
)
def _generate_key_pair(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.sign import generate_key_pair

    generate_key_pair(args.output_key_prefix)
    return 0


@verb(
    "status",
    "booted mode, snapshots and partitions",
    arg("--json", action="store_true", help="machine-readable output"),
    DEVICE,
)
def _status(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.status import show_status

    return show_status(cfg, as_json=args.json, installed=installed(args, cfg))


@verb(
    "logs",
    "what cos did in the last boot (or boot N of the last 20): stages, steps, failures",
    arg("--boot", type=int, metavar="N", help="a kept boot's number (cos status names it)"),
    arg("--json", action="store_true", help="machine-readable output"),
    DEVICE,
)
def _logs(args: argparse.Namespace, cfg: Config) -> int:
    from cos.actions.logs import show_logs

    return show_logs(cfg, boot=args.boot, as_json=args.json, installed=installed(args, cfg))


# Hidden: prints the shell completion script `cos init` installs.
@verb(
    "completion",
    "print a shell completion script",
    arg("shell", choices=["bash", "zsh"]),
    hidden=True,
)
def _completion(args: argparse.Namespace, cfg: Config) -> int:
    from cos.docgen import completion

    render = completion.bash if args.shell == "bash" else completion.zsh
    print(render(build_parser()), end="")
    return 0
