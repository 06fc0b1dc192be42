"""Logging and the transcript of an action.

Actions read as a list of named, timed steps: ``with step("Partitioning disk"): …``.
On a TTY the steps show as rich status lines; elsewhere they are plain log lines
("==> Partitioning disk" / "    done in 1.23s"), which is what CI logs and serial
consoles want. Human output goes to stderr; with --json, steps and warnings are also
events on stdout (cos.events).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from cos import events

log = logging.getLogger("cos")

_state = {"depth": 0}


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


class _EventHandler(logging.Handler):
    """Warnings and errors also become `log` events (a no-op without --json)."""

    def emit(self, record: logging.LogRecord) -> None:
        events.emit("log", level=record.levelname.lower(), message=record.getMessage())


@cache
def stderr_console() -> Any:
    """The one rich console: log lines and progress bars share it (stdout is for data)."""
    from rich.console import Console

    return Console(stderr=True)


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    """Configure the root 'cos' logger once per process."""
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    root = logging.getLogger("cos")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty() and not debug:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=stderr_console(), show_time=False, show_path=False, markup=False
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    root.addHandler(handler)
    root.addHandler(_EventHandler(logging.WARNING))
    root.setLevel(level)
    root.propagate = False


@contextmanager
def step(title: str) -> Iterator[None]:
    """A named phase of an action; logs its start and its duration."""
    depth = _state["depth"]
    indent = "  " * depth
    log.info("%s==> %s", indent, title)
    events.emit("step-start", step=title, depth=depth)
    start = time.monotonic()
    _state["depth"] += 1
    try:
        yield
    except BaseException:
        secs = time.monotonic() - start
        log.debug("%s    failed after %.2fs", indent, secs)
        events.emit("step-end", step=title, depth=depth, seconds=round(secs, 3), ok=False)
        raise
    finally:
        _state["depth"] -= 1
    secs = time.monotonic() - start
    log.debug("%s    done in %.2fs", indent, secs)
    events.emit("step-end", step=title, depth=depth, seconds=round(secs, 3), ok=True)
