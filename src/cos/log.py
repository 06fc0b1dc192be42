"""Logging and the transcript of an action.

Actions read as a list of named, timed steps: ``with step("Partitioning disk"): …``.
On a TTY the steps show as rich status lines; elsewhere they are plain log lines
("==> Partitioning disk" / "    done in 1.23s"), which is what CI logs and serial
consoles want.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("cos")

_state = {"depth": 0}


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


def setup_logging(debug: bool = False, quiet: bool = False) -> None:
    """Configure the root 'cos' logger once per process."""
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    root = logging.getLogger("cos")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty() and not debug:
        from rich.logging import RichHandler

        handler = RichHandler(show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@contextmanager
def step(title: str) -> Iterator[None]:
    """A named phase of an action; logs its start and its duration."""
    indent = "  " * _state["depth"]
    log.info("%s==> %s", indent, title)
    start = time.monotonic()
    _state["depth"] += 1
    try:
        yield
    except BaseException:
        log.debug("%s    failed after %.2fs", indent, time.monotonic() - start)
        raise
    finally:
        _state["depth"] -= 1
    log.debug("%s    done in %.2fs", indent, time.monotonic() - start)
