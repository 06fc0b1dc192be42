"""The table of verbs and what its entries are made of.

A verb is a name, a help line, its arguments and a handler; `@verb(...)` enters the
function below it. Arguments are data (`Arg`: one `add_argument` call kept for
later) so an entry reads as a list, and the flag groups several verbs share
(image source, installed device) are tuples of them.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from cos import __version__
from cos.errors import UsageError

if TYPE_CHECKING:
    from cos.config import Config
    from cos.system.installed import Installed


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line + hint, exit 2, like every other error
        raise UsageError(message, hint=f"see '{self.prog} --help'")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse (before 3.12) drops a `--` given as a value after `--` and hands the
        positional that took it an empty list: that is a missing value."""
        ns, extra = super().parse_known_args(args, namespace)
        for action in self._actions:
            one = not action.option_strings and action.nargs is None
            if one and isinstance(getattr(ns, action.dest, None), list):
                self.error(f"argument {action.metavar or action.dest}: expected one value")
        return ns, extra


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class OneOf:
    """Arguments that exclude each other."""

    args: tuple[Arg, ...]


Spec = Arg | OneOf


def arg(*flags: str, **options: Any) -> Arg:
    """The arguments of `ArgumentParser.add_argument`, applied when the parser is built."""
    return Arg(flags, options)


def one_of(*args: Arg) -> OneOf:
    return OneOf(args)


def add(parser: argparse.ArgumentParser, specs: Iterable[Spec]) -> None:
    for spec in specs:
        if isinstance(spec, OneOf):
            group = parser.add_mutually_exclusive_group()
            for a in spec.args:
                group.add_argument(*a.flags, **_fresh(a.options))
        else:
            parser.add_argument(*spec.flags, **_fresh(spec.options))


def _fresh(options: dict[str, Any]) -> dict[str, Any]:
    """A copy per parser: specs are shared, a `default=[]` list must not be."""
    return {k: copy.copy(v) for k, v in options.items()}


def size_mib(text: str) -> int:
    units = {"": 1, "M": 1, "MIB": 1, "G": 1024, "GIB": 1024, "T": 1024 * 1024}
    t = text.strip().upper()
    num = t.rstrip("MGTIB")
    unit = t[len(num) :]
    if unit not in units or not num.isdigit():
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (use e.g. 4096, 12G)")
    return int(num) * units[unit]


def _bool(text: str) -> bool:
    """true/false (also 1/0, yes/no, on/off); anything else is refused, not taken as true."""
    value = {"true": True, "1": True, "yes": True, "on": True}.get(text.strip().lower())
    if value is None and text.strip().lower() not in ("false", "0", "no", "off"):
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true or false)")
    return bool(value)


IMAGE = arg("image", metavar="IMAGE", help="docker://…, host/repo:tag, oci:DIR[:tag]")
OUTPUT = arg("-o", "--output", required=True, type=Path, metavar="OUT")
CLOUD_INIT = arg("--cloud-init", action="append", default=[], type=Path, metavar="FILE")
REBOOT = arg("--reboot", action="store_true", help="reboot when done")
DRY_RUN = arg("--dry-run", action="store_true", help="print the plan, change nothing")
STRICT = arg("--strict", action="store_true", help="warnings are errors: such documents do not run")

TLS_VERIFY = arg(
    "--tls-verify",
    default=None,
    type=_bool,
    metavar="BOOL",
    help="verify TLS of the registry (false for plain HTTP or self-signed)",
)

# Where an image comes from and what it must satisfy; they become config flags.
IMAGE_SOURCE = (
    TLS_VERIFY,
    arg(
        "--cosign-key",
        type=Path,
        metavar="PATH",
        help="refuse images not signed with this key (cosign.pub)",
    ),
    arg("--platform", metavar="OS/ARCH", help="pick from multi-platform images"),
)

# Where the installed system's parts are (default: as the initrd left them). For
# maintenance of a device mounted by hand; hidden from --help.
DEVICE = (
    arg("--state-dir", type=Path, help=argparse.SUPPRESS),
    arg("--oem-dir", type=Path, help=argparse.SUPPRESS),
    arg("--run-dir", type=Path, help=argparse.SUPPRESS),
    arg("--recovery-dir", type=Path, help=argparse.SUPPRESS),
    arg("--disk", type=Path, help=argparse.SUPPRESS),
)

EVENTS = arg(
    "--json",
    action="store_true",
    dest="events",
    help="progress as JSON Lines events on stdout (human output stays on stderr)",
)


Handler = Callable[[argparse.Namespace, "Config"], int]


@dataclass(frozen=True)
class Verb:
    name: str
    help: str
    args: tuple[Spec, ...]
    run: Handler
    events: bool  # --json streams JSON Lines events on stdout (docs/json-events.md)
    hidden: bool  # left out of --help and completion lists; help is its description


VERBS: dict[str, Verb] = {}


def verb(
    name: str,
    help: str,
    *args: Spec | tuple[Spec, ...],
    events: bool = False,
    hidden: bool = False,
) -> Callable[[Handler], Handler]:
    """Enter the handler below in VERBS; a tuple among args is a shared flag group."""
    flat = tuple(s for a in args for s in (a if isinstance(a, tuple) else (a,)))

    def enter(run: Handler) -> Handler:
        VERBS[name] = Verb(name, help, flat, run, events, hidden)
        return run

    return enter


def installed(args: argparse.Namespace, cfg: Config) -> Installed:
    """The system the DEVICE flags point at, the running one where they are not given."""
    from cos.system.installed import Installed

    inst = Installed.running(cfg.layout.oem_mount)
    return Installed(
        state_dir=args.state_dir or inst.state_dir,
        oem_dir=args.oem_dir or inst.oem_dir,
        run_dir=args.run_dir or inst.run_dir,
        recovery_dir=args.recovery_dir,
        disk=args.disk,
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb in VERBS (cos.cli.verbs fills it when imported)."""
    p = Parser(prog="cos", description="Make container images bootable and keep them updated.")
    p.add_argument("--version", action="version", version=f"cos {__version__}")
    p.add_argument("--debug", action="store_true", help="show commands run and tracebacks")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    p.add_argument("--config-dir", type=Path, help="configuration directory (default /etc/cos)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for v in VERBS.values():
        if v.hidden:  # no help= at all: argparse lists every verb given one
            s = sub.add_parser(v.name, description=v.help)
        else:
            s = sub.add_parser(v.name, help=v.help)
        add(s, v.args)
        if v.events:
            add(s, [EVENTS])
    return p
