"""JSON Lines events on stdout, so a controller or CI job can follow a long command.

`--json` on a long-running command (build-disk, upgrade, …) turns the sink on: every
event is one compact JSON object on one line of stdout, flushed at once. Human output
stays on stderr. While the sink is on, `sys.stdout` points at stderr, so a stray
print can never break the stream; the events go to the stream that was stdout.

Every event has `event` (its type), `time` (RFC 3339, UTC) and `command`. A run is
`start`, then steps, progress and warnings, then at most one `error` and exactly one
`result`, also on failure and on Ctrl-C. The schema is `schema()` (published as
docs/events.schema.json, described in docs/json-events.md).

Nothing here may carry secrets: the start event names the command and a fixed list
of its non-secret arguments, never the argv; the other events carry what the human
output on stderr carries already.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from cos import __version__

VERSION = 1
# Arguments a start event may show: references, paths and choices, never credentials.
SAFE_ARGS = (
    "image",
    "dest",
    "output",
    "type",
    "device",
    "system",
    "recovery_system",
    "force",
    "recovery",
    "bootloader",
    "check",
    "download_only",
    "apply",
    "offline",
    "reset_persistent",
    "reset_oem",
)
PROGRESS_EVERY = 1.0  # seconds between progress events of one blob
# `user:password@` before a registry host: at the start of a value, after `//`, or after
# a space, quote, `(` or `=` in a sentence; never `repo@sha256:…` (no `/` follows).
_USERINFO = re.compile(r"""(?:^|(?<=//)|(?<=[\s'"(=]))[^\s'"/(]+@(?=[\w.\[\]:-]+/)""")


class _Sink:
    def __init__(self) -> None:
        self.out: TextIO | None = None
        self.saved_stdout: TextIO | None = None
        self.command = ""
        self.summary: dict[str, Any] = {}
        self.finished = False


_sink = _Sink()


def enabled() -> bool:
    return _sink.out is not None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def emit(event: str, **fields: Any) -> None:
    """Write one event line (no-op when the sink is off)."""
    out = _sink.out
    if out is None:
        return
    record = {"event": event, "time": _now(), "command": _sink.command}
    record.update({k: _safe(v) if isinstance(v, str) else v for k, v in fields.items()})
    out.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    out.flush()


def scrub(text: str) -> str:
    """text without the `user:password@` part of any image reference in it; everything
    cos shows (error lines, tracebacks, events) passes here."""
    return _USERINFO.sub("", text)


def _safe(value: Any) -> Any:
    """value as shown in an event: a reference loses any `user:password@` part."""
    if isinstance(value, bool | int) or value is None:
        return value
    return scrub(str(value))  # no user:password@ in a reference, ever


def start(command: str, args: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """Turn the sink on for command and emit `start` with its safe arguments."""
    _sink.out = stream if stream is not None else sys.stdout
    _sink.saved_stdout = sys.stdout
    sys.stdout = sys.stderr
    _sink.command = command
    _sink.summary = {}
    _sink.finished = False
    shown = {k: _safe(args[k]) for k in SAFE_ARGS if args.get(k) not in (None, False, [])}
    emit("start", version=__version__, schema=VERSION, args=shown)


def summary(**fields: Any) -> None:
    """Facts for the final `result` event (digest, snapshot, output path, …); empty
    values (a `dir:` tree has no digest) are left out."""
    _sink.summary.update({k: v for k, v in fields.items() if v not in (None, "")})


def error(message: str, hint: str, exit_code: int) -> None:
    emit("error", message=message, hint=hint, exit_code=exit_code)


def finish(exit_code: int) -> None:
    """Emit the one `result` event and turn the sink off; later calls do nothing."""
    if _sink.out is None or _sink.finished:
        return
    _sink.finished = True
    emit("result", **{**_sink.summary, "ok": exit_code == 0, "exit_code": exit_code})
    if _sink.saved_stdout is not None and sys.stdout is sys.stderr:
        sys.stdout = _sink.saved_stdout
    _sink.out = None
    _sink.saved_stdout = None


def progress(what: str, total: int) -> Callable[[int], None]:
    """A byte counter for one blob: `progress` events at most every PROGRESS_EVERY
    seconds, and always the first and the one that completes it."""
    last = [-1.0]
    done = [False]

    def advance(held: int) -> None:
        if _sink.out is None or done[0]:
            return
        now = time.monotonic()
        complete = held >= total
        if complete or last[0] < 0 or now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            done[0] = complete
            emit("progress", what=what, bytes=held, total=total)

    return advance


def schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of one event line."""
    common = {
        "event": {"type": "string"},
        "time": {
            "type": "string",
            "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$",
            "description": "RFC 3339, UTC",
        },
        "command": {"type": "string", "description": "the cos command, e.g. upgrade"},
    }

    def kind(name: str, doc: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {
            "description": doc,
            "type": "object",
            "properties": {**common, "event": {"const": name}, **props},
            "required": ["event", "time", "command", *required],
            "additionalProperties": name == "result",
        }

    string, integer = {"type": "string"}, {"type": "integer", "minimum": 0}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cos --json event",
        "description": "One line of the JSON Lines stream a cos command writes with --json.",
        "oneOf": [
            kind(
                "start",
                "The command began.",
                {
                    "version": string,
                    "schema": {"const": VERSION},
                    "args": {
                        "type": "object",
                        "propertyNames": {"enum": list(SAFE_ARGS)},
                        "additionalProperties": {"type": ["string", "integer", "boolean"]},
                    },
                },
                ["version", "schema", "args"],
            ),
            kind(
                "step-start",
                "A named phase began; depth counts enclosing phases.",
                {"step": string, "depth": integer},
                ["step", "depth"],
            ),
            kind(
                "step-end",
                "A phase ended, ok false when it raised.",
                {
                    "step": string,
                    "depth": integer,
                    "seconds": {"type": "number", "minimum": 0},
                    "ok": {"type": "boolean"},
                },
                ["step", "depth", "seconds", "ok"],
            ),
            kind(
                "progress",
                "Bytes of one blob held so far (at most one a second per blob, and at 100 %).",
                {"what": string, "bytes": integer, "total": integer},
                ["what", "bytes", "total"],
            ),
            kind(
                "log",
                "A warning (or worse) that the human output shows too.",
                {"level": {"enum": ["warning", "error", "critical"]}, "message": string},
                ["level", "message"],
            ),
            kind(
                "error",
                "Why the command failed; exit_code as in docs/exit-codes.md.",
                {"message": string, "hint": string, "exit_code": integer},
                ["message", "hint", "exit_code"],
            ),
            kind(
                "result",
                "The last event, exactly once; more fields summarise the command.",
                {
                    "ok": {"type": "boolean"},
                    "exit_code": integer,
                    "image": {"type": "string", "description": "the image reference used"},
                    "digest": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                    "output": {"type": "string", "description": "file written"},
                    "dest": {"type": "string", "description": "directory written"},
                    "device": {"type": "string", "description": "device written"},
                    "snapshot": {"type": "integer", "minimum": 1},
                    "changed": {"type": "boolean", "description": "false: already up to date"},
                    "available": {
                        "type": "boolean",
                        "description": "upgrade --check: an update is there",
                    },
                    "staged": {
                        "type": "boolean",
                        "description": "the snapshot is staged: it boots after upgrade --apply",
                    },
                    "bytes": {"type": "integer", "minimum": 0, "description": "size of output"},
                },
                ["ok", "exit_code"],
            ),
        ],
    }
