"""Command line: parse arguments, load config, call one action. No logic here.

The verbs are a table (cos.cli.verbs); this module builds the parser from it, looks
the verb up, and turns whatever happens into an exit code, one error line with a
hint, and the `result` event under --json.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from cos import events
from cos.cli.table import build_parser
from cos.cli.verbs import VERBS
from cos.config import Config, load_config
from cos.errors import CosError, ExitCode, UsageError
from cos.log import setup_logging

__all__ = ["EVENT_COMMANDS", "build_parser", "main"]


# Long commands: --json streams JSON Lines events on stdout (docs/json-events.md).
EVENT_COMMANDS = frozenset(v.name for v in VERBS.values() if v.events)


def _dispatch(args: argparse.Namespace, cfg: Config) -> int:
    v = VERBS.get(args.command or "")
    if v is None:
        raise UsageError("no command given", hint="see 'cos --help'")
    return v.run(args, cfg)


def _fail(message: str, hint: str, code: ExitCode, prefix: str = "") -> int:
    """The one-line error and hint on stderr, and the `error` event under --json."""
    message, hint = _one_line(events.scrub(message)), _one_line(events.scrub(hint))
    print(f"cos: {prefix}{message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    events.error(message, hint, int(code))
    return int(code)


def _one_line(text: str) -> str:
    """text with its control characters escaped: a newline in a path given by the user
    must not split the error line (nor a terminal escape reach the terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _traceback(exc: BaseException) -> None:
    """The traceback itself on stderr (--debug): what a bug report needs. Not through the
    log, whose plain format shows a record's message only."""
    print(events.scrub("".join(traceback.format_exception(exc))).rstrip(), file=sys.stderr)


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
            _traceback(exc)
        return code
    except KeyboardInterrupt:
        return _fail("interrupted", "", ExitCode.INTERRUPTED)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # a path the user gave, or one made from it
            code = _fail(_too_long(exc), "use a shorter path", ExitCode.USAGE, "error: ")
            if debug:
                _traceback(exc)
            return code
        return _bug(exc, debug)
    except Exception as exc:
        return _bug(exc, debug)


def _bug(exc: Exception, debug: bool) -> int:
    """An internal error: say so, and show details only with --debug."""
    hint = "" if debug else "rerun with --debug for a traceback"
    code = _fail(f"internal error: {type(exc).__name__}: {exc}", hint, ExitCode.BUG)
    if debug:
        _traceback(exc)
    return code


def _too_long(exc: OSError) -> str:
    name = os.fsdecode(exc.filename or "")
    shown = name if len(name) <= 80 else f"{name[:40]}…{name[-30:]}"
    return f"file name too long: {shown}"
