"""Progress of a pull: bars with bytes and speed on a terminal, one line per layer elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cos import events
from cos.log import stderr_console
from cos.oci.digest import short_digest

log = logging.getLogger("cos")
MIB = 1024 * 1024


class PullProgress:
    """Plain reporting: a line when a blob is complete (CI logs, serial consoles)."""

    @staticmethod
    def for_terminal() -> PullProgress:
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            return BarProgress()
        return PullProgress()

    @contextmanager
    def running(self, total: int) -> Iterator[None]:
        if total:
            log.info("Fetching %.1f MiB", total / MIB)
        yield

    def track(self, digest: str, size: int) -> Callable[[int], None]:
        """The byte counter for one blob: this report, and `progress` events under --json."""
        shown, evented = self.layer(digest, size), events.progress(digest, size)

        def advance(held: int) -> None:
            shown(held)
            evented(held)

        return advance

    def layer(self, digest: str, size: int) -> Callable[[int], None]:
        start = time.monotonic()
        said = [False]

        def advance(held: int) -> None:
            if held >= size and not said[0]:
                said[0] = True
                secs = max(time.monotonic() - start, 1e-3)
                log.info(
                    "  %s  %.1f MiB in %.1fs (%.1f MiB/s)",
                    short_digest(digest),
                    size / MIB,
                    secs,
                    size / MIB / secs,
                )

        return advance


class BarProgress(PullProgress):
    """rich bars: one per blob, bytes, speed and time left."""

    def __init__(self) -> None:
        self._bar: Any = None

    @contextmanager
    def running(self, total: int) -> Iterator[None]:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=False,
        ) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def layer(self, digest: str, size: int) -> Callable[[int], None]:
        if self._bar is None:
            return super().layer(digest, size)
        task = self._bar.add_task(short_digest(digest), total=size)
        bar = self._bar
        return lambda held: bar.update(task, completed=held)
