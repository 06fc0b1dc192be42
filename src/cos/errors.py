"""User-facing errors.

A `CosError` is something the user can fix: it carries one line saying what is
wrong, a hint, and a documented exit code. Anything else that escapes is a bug and
is reported as such (with a traceback only under --debug).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (docs/exit-codes.md)."""

    OK = 0
    BUG = 1  # an unexpected error inside cos
    USAGE = 2  # bad command line
    CONFIG = 3  # invalid configuration file or environment
    IMAGE = 4  # image reference cannot be resolved, pulled or is unusable
    DISK = 5  # target device/file unusable (size, existing install, …)
    TOOL = 6  # an external tool failed or is missing
    STATE = 7  # the action does not fit the running system (wrong mode, not an image build)
    STAGE = 8  # a cloud-init stage failed under --strict
    INTERRUPTED = 130


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
