"""The single door to subprocesses.

Every external command goes through `run()`: argv lists only (never a shell), a
minimal environment, stdin from /dev/null unless input is given, the command
logged under --debug, and one typed error (`ToolError`) when it fails. Keeping one
door makes the commands auditable.

Secrets stay off argv where the tool allows: registry credentials reach skopeo
through its auth files and environment, a password to hash goes on stdin, and a
credential helper gets the server on stdin and answers on stdout (never logged). The
one that must be an argument (systemd-firstboot --root-password=…) is marked by its
caller in `secret_args` and logged as `***`. Errors carry the tool's name and its
stderr, never its argv.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cos.errors import ToolError

log = logging.getLogger("cos.run")

# What a child may inherit. Everything else (tokens, proxies with credentials, the
# caller's locale quirks) stays behind.
_PASSED_ENV = ("PATH", "TMPDIR", "HOME", "TERM")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def which(tool: str) -> str | None:
    return shutil.which(tool, path=minimal_env()["PATH"])


def require(*tools: str) -> None:
    """Fail early, with a hint, when a needed tool is missing."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        raise ToolError(
            f"required tool not found: {', '.join(missing)}",
            hint="run scripts/setup-host.sh (or install the Debian packages that provide them)",
        )


def shown(argv: Sequence[str], secret_args: frozenset[int] = frozenset()) -> str:
    """argv as a shell line for the log; a secret `--flag=value` keeps its flag name."""
    words = []
    for i, a in enumerate(argv):
        flag, sep, _ = a.partition("=")
        if i not in secret_args:
            words.append(shlex.quote(a))
        elif sep and flag.startswith("-"):
            words.append(f"{shlex.quote(flag)}=***")
        else:
            words.append("***")
    return " ".join(words)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    secret_args: frozenset[int] = frozenset(),
) -> Result:
    """Run argv and return its result; raise ToolError when it fails and check is set.

    secret_args lists argv positions whose value the --debug log shows as ***.
    """
    args = [os.fspath(a) for a in argv]
    log.debug("$ %s", shown(args, secret_args))
    data = input.encode() if isinstance(input, str) else input
    try:
        proc = subprocess.run(
            args,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=minimal_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise ToolError(
            f"{args[0]}: command not found",
            hint="run scripts/setup-host.sh (or install the package that provides it)",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{Path(args[0]).name} did not finish within {timeout:.0f}s") from exc
    out = proc.stdout.decode(errors="replace") if proc.stdout is not None else ""
    err = proc.stderr.decode(errors="replace") if proc.stderr is not None else ""
    if err and capture:
        log.debug("%s stderr: %s", Path(args[0]).name, err.strip()[-2000:])
    if check and proc.returncode != 0:
        tail = err.strip().splitlines()[-1] if err.strip() else ""
        raise ToolError(
            f"{Path(args[0]).name} failed (exit {proc.returncode})" + (f": {tail}" if tail else ""),
            hint="rerun with --debug to see the command and its full output",
            returncode=proc.returncode,
            stderr=err,
        )
    return Result(tuple(args), proc.returncode, out, err)
