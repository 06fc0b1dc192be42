"""Command line: parse arguments, load config, call one action. No logic here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cos import __version__, events
from cos.config import Config, load_config
from cos.errors import CosError, ExitCode, UsageError
from cos.log import setup_logging

log = logging.getLogger("cos")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line + hint, exit 2, like every other error
        raise UsageError(message, hint=f"see '{self.prog} --help'")


def _size_mib(text: str) -> int:
    units = {"": 1, "M": 1, "MIB": 1, "G": 1024, "GIB": 1024, "T": 1024 * 1024}
    t = text.strip().upper()
    num = t.rstrip("MGTIB")
    unit = t[len(num) :]
    if unit not in units or not num.isdigit():
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 4096, 12G)")
    return int(num) * units[unit]


def _tls_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls-verify",
        default=None,
        type=lambda s: s.lower() not in ("false", "0", "no"),
        metavar="BOOL",
        help="verify TLS of the registry (false for plain HTTP or self-signed)",
    )


def _image_flags(p: argparse.ArgumentParser) -> None:
    _tls_flag(p)
    p.add_argument(
        "--cosign-key",
        type=Path,
        metavar="PATH",
        help="refuse images not signed with this key (cosign.pub)",
    )
    p.add_argument("--platform", metavar="OS/ARCH", help="pick from multi-platform images")


# Long commands: --json streams JSON Lines events on stdout (docs/json-events.md).
EVENT_COMMANDS = frozenset(
    {
        "build-disk",
        "build-iso",
        "install",
        "live-install",
        "upgrade",
        "upgrade-recovery",
        "reset",
        "pull-image",
    }
)


def _events_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        dest="events",
        help="progress as JSON Lines events on stdout (human output stays on stderr)",
    )


def _device_flags(p: argparse.ArgumentParser) -> None:
    """Where the installed system's parts are (default: as the initrd left them).

    For maintenance of a device mounted by hand; hidden from --help."""
    p.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--oem-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--recovery-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--disk", type=Path, help=argparse.SUPPRESS)


def _installed(args: argparse.Namespace, cfg: Config) -> Any:
    from cos.system.installed import Installed

    inst = Installed.running(cfg.layout.oem_mount)
    return Installed(
        args.state_dir or inst.state_dir,
        args.oem_dir or inst.oem_dir,
        args.run_dir or inst.run_dir,
        args.recovery_dir,
        args.disk,
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cos", description="Make container images bootable and keep them updated.")
    p.add_argument("--version", action="version", version=f"cos {__version__}")
    p.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    p.add_argument("--config-dir", type=Path, help="configuration directory (default /etc/cos)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("init", help="install the toolkit's features into an image (image build)")
    s.add_argument("features", nargs="*", metavar="FEATURE", help="features (default: all)")
    s.add_argument("--force", action="store_true", help="run even outside an image build")
    s.add_argument("--list", action="store_true", help="list the features and exit")

    s = sub.add_parser("build-disk", help="turn an image into a bootable disk")
    s.add_argument("image", metavar="IMAGE", help="docker://…, host/repo:tag, oci:DIR[:tag]")
    s.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    s.add_argument("--cloud-init", action="append", default=[], type=Path, metavar="FILE")
    s.add_argument(
        "--type",
        choices=["raw", "qcow2", "vhd", "gce"],
        default="raw",
        help="raw (default), qcow2, vhd (Azure fixed VHD), gce (disk.raw in a tar.gz)",
    )
    s.add_argument("--size", type=_size_mib, help="total disk size (default: fit the layout)")
    s.add_argument("--recovery-system", metavar="REF", help="image for recovery (default: IMAGE)")
    s.add_argument(
        "--expandable",
        action="store_true",
        help="a small disk: state and persistent partitions are made on first boot, filling"
        " the disk, and the system is deployed from recovery",
    )
    s.add_argument(
        "--deploy-command",
        metavar="CMD",
        help="with --expandable: what deploys the system on first boot (default: cos reset)",
    )
    _image_flags(s)
    _events_flag(s)

    s = sub.add_parser("build-iso", help="live and installation media (hybrid ISO, BIOS + EFI)")
    s.add_argument("image", metavar="IMAGE", help="docker://…, host/repo:tag, oci:DIR[:tag]")
    s.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    s.add_argument("--cloud-init", action="append", default=[], type=Path, metavar="FILE")
    s.add_argument("--label", default="COS_LIVE", help="ISO volume label (default COS_LIVE)")
    s.add_argument("--overlay-iso", type=Path, metavar="DIR", help="extra files for the ISO root")
    _image_flags(s)
    _events_flag(s)

    s = sub.add_parser("mount", help="apply the immutable layout (run from the initrd)")
    s.add_argument("--mode", choices=["active", "passive", "recovery", "live"], required=True)
    s.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    s.add_argument("--oem-label", help="filesystem label of COS_OEM (from the kernel cmdline)")
    s.add_argument("--persistent-label", help="filesystem label of COS_PERSISTENT")
    s.add_argument("--no-stages", action="store_true", help="skip the rootfs/initramfs stages")

    s = sub.add_parser("cloud-init", help="run a stage of cloud-configs (yip compatible)")
    s.add_argument("sources", nargs="*", metavar="PATH", help="file, directory, URL or -")
    s.add_argument("-s", "--stage", default="default", help="stage to run (default: default)")
    s.add_argument("--root", type=Path, default=Path("/"), help="act on this target root")
    s.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    s.add_argument("--strict", action="store_true", help="fail when any step fails")
    s.add_argument("--schema", action="store_true", help="print the JSON Schema and exit")

    s = sub.add_parser("run-stage", help="run a stage from the default cloud-config paths")
    s.add_argument("stage", metavar="STAGE")
    s.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    s.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    s.add_argument("--strict", action="store_true", help="fail when any step fails")

    s = sub.add_parser("install", help="install an image onto a disk (from live or recovery)")
    s.add_argument("device", type=Path, metavar="DEVICE", help="block device, e.g. /dev/vdb")
    s.add_argument(
        "--system", metavar="REF", help="image to install (default on live media: their image)"
    )
    s.add_argument("--cloud-init", action="append", default=[], type=Path, metavar="FILE")
    s.add_argument("--recovery-system", metavar="REF", help="image for recovery (default: REF)")
    s.add_argument("--force", action="store_true", help="overwrite an existing installation")
    after = s.add_mutually_exclusive_group()
    after.add_argument("--reboot", action="store_const", const="reboot", dest="after")
    after.add_argument("--poweroff", action="store_const", const="poweroff", dest="after")
    _image_flags(s)
    _events_flag(s)

    s = sub.add_parser(
        "live-install", help="on live media: run the install: section of the cloud-config"
    )
    _events_flag(s)

    s = sub.add_parser("upgrade", help="pull a new image and boot it next (A/B, atomic)")
    s.add_argument("--system", metavar="REF", help="image (default: the recorded source)")
    s.add_argument("--force", action="store_true", help="upgrade even to the same digest")
    s.add_argument("--recovery", action="store_true", help="upgrade the recovery system instead")
    s.add_argument(
        "--bootloader", action="store_true", help="also reinstall GRUB from the new image"
    )
    s.add_argument("--reboot", action="store_true", help="reboot when done")
    _image_flags(s)
    _device_flags(s)
    _events_flag(s)

    s = sub.add_parser("upgrade-recovery", help="replace the recovery system atomically")
    s.add_argument("--recovery-system", metavar="REF", help="image (default: the recorded one)")
    s.add_argument("--force", action="store_true", help="replace even with the same digest")
    _image_flags(s)
    _device_flags(s)
    _events_flag(s)

    s = sub.add_parser("rollback", help="make a kept snapshot the one that boots")
    s.add_argument("snapshot", nargs="?", type=int, metavar="N", help="default: the newest other")
    s.add_argument("--once", action="store_true", help="only for the next boot (next_entry)")
    s.add_argument("--reboot", action="store_true", help="reboot when done")
    _device_flags(s)

    s = sub.add_parser("reset", help="from recovery: redeploy the system as freshly installed")
    s.add_argument("--system", metavar="REF", help="image (default: the recovery image)")
    s.add_argument("--reset-persistent", action="store_true", help="also wipe COS_PERSISTENT")
    s.add_argument("--reset-oem", action="store_true", help="also remove the OEM cloud-configs")
    s.add_argument("--reboot", action="store_true", help="reboot when done")
    _image_flags(s)
    _device_flags(s)
    _events_flag(s)

    s = sub.add_parser("boot-assessment", help="confirm or fail a trial boot (run by systemd)")
    s.add_argument("--mark-good", action="store_true", help="run the checks, confirm the trial")
    _device_flags(s)

    s = sub.add_parser("pull-image", help="unpack an image into a directory")
    s.add_argument("image", metavar="IMAGE", help="docker://…, host/repo:tag, oci:DIR[:tag]")
    s.add_argument("dest", type=Path, metavar="DIR", help="new (or empty) directory")
    _image_flags(s)
    _events_flag(s)

    s = sub.add_parser("inspect", help="digest, layers, labels and OS of an image")
    s.add_argument("image", metavar="IMAGE", help="docker://…, host/repo:tag, oci:DIR[:tag]")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _image_flags(s)

    s = sub.add_parser("sign", help="sign an image (cosign-compatible, key-based)")
    s.add_argument("image", metavar="IMAGE", help="host/repo:tag or oci:DIR[:tag]")
    s.add_argument("--key", required=True, type=Path, metavar="PATH", help="cosign.key")
    s.add_argument(
        "-a",
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra signed claim (repeatable)",
    )
    _tls_flag(s)

    s = sub.add_parser("generate-key-pair", help="write cosign.key and cosign.pub")
    s.add_argument(
        "--output-key-prefix",
        type=Path,
        default=Path("cosign"),
        metavar="PREFIX",
        help="file name prefix (default: cosign)",
    )

    s = sub.add_parser("status", help="booted mode, snapshots and partitions")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _device_flags(s)

    # Hidden (no help=): prints the shell completion script `cos init` installs.
    s = sub.add_parser("completion", description="print a shell completion script")
    s.add_argument("shell", choices=["bash", "zsh"])

    return p


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    if args.command == "init":
        from cos.actions.init import init_image
        from cos.system.features import FEATURES

        if args.list:
            for f in FEATURES.values():
                print(f"{f.name:20} {f.summary}")
            return 0
        init_image(args.features, force=args.force)
        return 0
    if args.command == "build-disk":
        from cos.actions.build_disk import BuildDiskRequest, build_disk
        from cos.disk.formats import DiskType

        build_disk(
            BuildDiskRequest(
                image=args.image,
                output=args.output,
                cloud_init=args.cloud_init,
                disk_type=DiskType(args.type),
                size_mib=args.size,
                recovery_image=args.recovery_system,
                expandable=args.expandable,
                deploy_command=args.deploy_command,
            ),
            cfg,
        )
        return 0
    if args.command == "build-iso":
        from cos.actions.build_iso import BuildIsoRequest, build_iso

        build_iso(
            BuildIsoRequest(
                image=args.image,
                output=args.output,
                cloud_init=args.cloud_init,
                label=args.label,
                overlay=args.overlay_iso,
            ),
            cfg,
        )
        return 0
    if args.command == "mount":
        from cos.actions.mount import mount_layout

        mount_layout(
            cfg, args.mode, args.root, args.oem_label, args.persistent_label, not args.no_stages
        )
        return 0
    if args.command == "cloud-init":
        from cos.actions import cloud_init

        if args.schema:
            cloud_init.print_schema()
            return 0
        if not args.sources:
            raise UsageError("no cloud-config given", hint="cos cloud-init [-s STAGE] PATH…")
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
    if args.command == "run-stage":
        from cos.actions import cloud_init

        cloud_init.run_system_stage(
            cfg, args.stage, args.root, dry_run=args.dry_run, strict=args.strict
        )
        return 0
    if args.command == "install":
        from cos.actions.install import InstallRequest, install

        install(
            InstallRequest(
                device=args.device,
                system=args.system,
                cloud_init=args.cloud_init,
                recovery_system=args.recovery_system,
                force=args.force,
                after=args.after,
            ),
            cfg,
        )
        return 0
    if args.command == "live-install":
        from cos.actions.install import auto_install

        auto_install(cfg)
        return 0
    if args.command == "upgrade-recovery" or (args.command == "upgrade" and args.recovery):
        from cos.actions.upgrade_recovery import RecoveryRequest, upgrade_recovery

        ref = args.recovery_system if args.command == "upgrade-recovery" else args.system
        upgrade_recovery(
            RecoveryRequest(system=ref, force=args.force, installed=_installed(args, cfg)), cfg
        )
        return 0
    if args.command == "upgrade":
        from cos.actions.upgrade import UpgradeRequest, upgrade

        upgrade(
            UpgradeRequest(
                system=args.system,
                force=args.force,
                reboot=args.reboot,
                installed=_installed(args, cfg),
                bootloader=args.bootloader,
            ),
            cfg,
        )
        return 0
    if args.command == "rollback":
        from cos.actions.rollback import RollbackRequest, rollback

        rollback(
            RollbackRequest(
                snapshot=args.snapshot,
                once=args.once,
                reboot=args.reboot,
                installed=_installed(args, cfg),
            ),
            cfg,
        )
        return 0
    if args.command == "reset":
        from cos.actions.reset import ResetRequest, reset

        reset(
            ResetRequest(
                system=args.system,
                reset_persistent=args.reset_persistent,
                reset_oem=args.reset_oem,
                reboot=args.reboot,
                installed=_installed(args, cfg),
            ),
            cfg,
        )
        return 0
    if args.command == "boot-assessment":
        from cos.actions.assess import assess

        print(assess(cfg, args.mark_good, _installed(args, cfg)))
        return 0
    if args.command == "pull-image":
        from cos.actions.images import PullRequest, pull_image

        pull_image(PullRequest(args.image, args.dest), cfg)
        return 0
    if args.command == "inspect":
        from cos.actions.images import inspect_image

        inspect_image(args.image, cfg, args.json)
        return 0
    if args.command == "sign":
        from cos.actions.sign import SignRequest, sign_image

        notes = {}
        for a in args.annotation:
            k, sep, v = a.partition("=")
            if not sep or not k:
                raise UsageError(f"annotation {a!r} is not KEY=VALUE", hint="e.g. -a build=42")
            notes[k] = v
        sign_image(SignRequest(args.image, args.key, notes), cfg)
        return 0
    if args.command == "generate-key-pair":
        from cos.actions.sign import generate_key_pair

        generate_key_pair(args.output_key_prefix)
        return 0
    if args.command == "status":
        from cos.actions.status import show_status

        return show_status(cfg, as_json=args.json, installed=_installed(args, cfg))
    if args.command == "completion":
        from cos.docgen import completion

        render = completion.bash if args.shell == "bash" else completion.zsh
        print(render(build_parser()), end="")
        return 0
    raise UsageError("no command given", hint="see 'cos --help'")


def _fail(message: str, hint: str, code: ExitCode, prefix: str = "") -> int:
    """The one-line error and hint on stderr, and the `error` event under --json."""
    print(f"cos: {prefix}{message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    events.error(message, hint, int(code))
    return int(code)


def _events_on_bad_usage(argv: list[str]) -> None:
    """A command line that does not parse still owes --json callers an error and a result."""
    command = next((a for a in argv if a in EVENT_COMMANDS), None)
    if command is not None and "--json" in argv and not events.enabled():
        events.start(command, {})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    code = _main(argv)
    events.finish(code)  # the one `result` event, whatever happened
    return code


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    setup_logging(debug=debug, quiet="--quiet" in argv or "-q" in argv)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "events", False):
            events.start(args.command, vars(args))
        flags: dict[str, Any] = {"debug": args.debug or None}
        if getattr(args, "tls_verify", None) is not None:
            flags["tls-verify"] = args.tls_verify
        if getattr(args, "cosign_key", None) is not None:
            flags["cosign-key"] = str(args.cosign_key)
            flags["verify"] = True
        if getattr(args, "platform", None):
            flags["platform"] = args.platform
        cfg = load_config(args.config_dir, flags=flags)
        return _dispatch(args, cfg)
    except CosError as exc:
        if isinstance(exc, UsageError):
            _events_on_bad_usage(argv)
        code = _fail(exc.message, exc.hint, exc.exit_code, prefix="error: ")
        if debug:
            log.exception("traceback")
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", "", ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: say so, and show details only with --debug
        hint = "" if debug else "rerun with --debug for a traceback"
        code = _fail(f"internal error: {type(exc).__name__}: {exc}", hint, ExitCode.BUG)
        if debug:
            log.exception("traceback")
        return code
