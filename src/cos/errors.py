"""User-facing errors.

A `CosError` is something the user can fix: it carries one line saying what is
wrong, a hint, and a documented exit code. Anything else that escapes is a bug and
is reported as such (with a traceback only under --debug).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (docs/exit-codes.md is generated from MEANINGS)."""

    OK = 0
    BUG = 1
    USAGE = 2
    CONFIG = 3
    IMAGE = 4
    DISK = 5
    TOOL = 6
    STATE = 7
    STAGE = 8
    NO_UPDATE = 9
    INTERRUPTED = 130


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.BUG: "internal error (a bug; rerun with `--debug` for a traceback)",
    ExitCode.USAGE: "bad command line",
    ExitCode.CONFIG: "invalid configuration (config file, environment, cloud-init file, grubenv)",
    ExitCode.IMAGE: (
        "image reference cannot be resolved, pulled or used (no kernel, not prepared by"
        " `cos init`), its signature is missing or does not verify, or a key file is unusable"
    ),
    ExitCode.DISK: "target disk or output unusable (too small, in use, holds an installation)",
    ExitCode.TOOL: "an external tool failed or is missing",
    ExitCode.STATE: (
        "the action does not fit this system (e.g. `cos init` outside an image build,"
        " `cos reset` outside recovery, `cos status` outside cos)"
    ),
    ExitCode.STAGE: "a cloud-config was refused or a cloud-init step failed (the rest ran)",
    ExitCode.NO_UPDATE: (
        "`cos upgrade --check`: no update (the source's image is the active one, or it failed"
        " its trial boot here); not an error. `--check` exits 0 when there is an update"
    ),
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}


class CosError(Exception):
    """An error the user can act on."""

    exit_code: ExitCode = ExitCode.BUG

    def __init__(self, message: str, hint: str = "", exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(CosError):
    exit_code = ExitCode.USAGE


class ConfigError(CosError):
    exit_code = ExitCode.CONFIG


class ImageError(CosError):
    exit_code = ExitCode.IMAGE


class DiskError(CosError):
    exit_code = ExitCode.DISK


class ToolError(CosError):
    """An external command failed; carries its argv[0], exit status and stderr tail."""

    exit_code = ExitCode.TOOL

    def __init__(
        self, message: str, hint: str = "", *, returncode: int | None = None, stderr: str = ""
    ) -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.stderr = stderr


class StateError(CosError):
    exit_code = ExitCode.STATE
