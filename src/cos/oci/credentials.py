"""Registry credentials where containers tools and docker keep them.

The auth files are searched in the containers order (`$REGISTRY_AUTH_FILE`,
`$XDG_RUNTIME_DIR/containers/auth.json`, `/run/containers/UID/auth.json`,
`~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json`); the first file that
yields credentials for the host wins. Within a file, as docker reads it:
`credHelpers[host]` names a helper for that registry, `credsStore` a helper for every
registry, and `auths[host]` holds base64 `user:password`.

A helper is `docker-credential-NAME get`, given the server on stdin and answering
`{"Username": …, "Secret": …}` on stdout: the secret travels through a pipe, never
argv, and neither the answer nor the secret is logged (run.py logs argv and stderr
only). A helper's "credentials not found" answer moves on to the next source; a
missing or failing helper is an error naming it, not a silent anonymous pull that
would fail later with a less useful message. Answers are kept for the process, so a
pull that opens several connections asks the helper once.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from pathlib import Path
from typing import Any

from cos import run as runner
from cos.errors import ImageError, ToolError
from cos.oci.jsondoc import load_json

log = logging.getLogger("cos")

HELPER_TIMEOUT = 60.0
_NOT_FOUND = "credentials not found"
_answers: dict[tuple[str, str], tuple[str, str] | None] = {}


def forget() -> None:
    """Drop the helper answers kept for this process."""
    _answers.clear()


def auth_files() -> list[Path]:
    env = os.environ
    home = Path(env.get("HOME", "/root"))
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers/auth.json")
    files.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    files.append(home / ".config/containers/auth.json")
    files.append(Path(env.get("DOCKER_CONFIG", home / ".docker")) / "config.json")
    return files


def _host_of(key: object) -> str:
    return re.sub(r"^https?://", "", str(key)).split("/")[0]


def _helper_name(value: object, where: Path) -> str:
    """The helper a file names, checked: it becomes part of a command name."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ImageError(
            f"{where}: invalid credential helper name {str(value)[:60]!r}",
            hint="a helper is named as in docker's config.json: "
            '"credHelpers": {"HOST": "NAME"} runs docker-credential-NAME',
        )
    return value


def from_helper(name: str, host: str, where: Path) -> tuple[str, str] | None:
    """user, secret from docker-credential-NAME for host (None: it knows none)."""
    if (name, host) in _answers:
        return _answers[(name, host)]
    tool = f"docker-credential-{name}"
    hint = f"install {tool} on PATH, or remove it from {where}"
    if runner.which(tool) is None:
        raise ToolError(f"credential helper {tool} (named in {where}) not found", hint=hint)
    try:
        res = runner.run([tool, "get"], input=host, check=False, timeout=HELPER_TIMEOUT)
    except ToolError as exc:
        raise ToolError(f"credential helper {tool}: {exc.message}", hint=hint) from exc
    answer: tuple[str, str] | None
    if res.returncode != 0:
        said = (res.stdout.strip() or res.stderr.strip()).splitlines()
        if said and _NOT_FOUND in said[-1].lower():
            log.debug("%s knows no credentials for %s", tool, host)
            answer = None
        else:
            raise ToolError(
                f"credential helper {tool} failed for {host} (exit {res.returncode})"
                + (f": {said[-1][:200]}" if said and "secret" not in said[-1].lower() else ""),
                hint=f"run `echo {host} | {tool} get` to see why",
            )
    else:
        answer = _parse_answer(res.stdout, tool, host)
    _answers[(name, host)] = answer
    return answer


def _parse_answer(text: str, tool: str, host: str) -> tuple[str, str] | None:
    try:
        doc: Any = load_json(text)
        user, secret = doc["Username"], doc["Secret"]
        if not isinstance(user, str) or not isinstance(secret, str):
            raise TypeError("Username and Secret must be strings")
    except (ValueError, KeyError, TypeError) as exc:
        # The message must not quote the answer: it holds the secret.
        raise ToolError(
            f"credential helper {tool} gave an unreadable answer for {host} ({type(exc).__name__})",
            hint='a helper prints {"ServerURL": …, "Username": …, "Secret": …}',
        ) from None
    if user == "<token>":
        raise ImageError(
            f"credential helper {tool} gave an identity token for {host}, which cos cannot use",
            hint="store a username and password (or access token) for this registry instead",
        )
    return (user, secret) if secret else None


def _from_file(doc: dict[str, Any], host: str, where: Path) -> tuple[str, str] | None:
    helpers = doc.get("credHelpers")
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _host_of(key) == host:
                found = from_helper(_helper_name(name, where), host, where)
                if found is not None:
                    return found
    if doc.get("credsStore"):
        found = from_helper(_helper_name(doc["credsStore"], where), host, where)
        if found is not None:
            return found
    auths = doc.get("auths", {})
    for key, entry in auths.items() if isinstance(auths, dict) else []:
        if _host_of(key) != host or not isinstance(entry, dict) or not entry.get("auth"):
            continue
        try:
            user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            continue
        return user, pw
    return None


def credentials(host: str) -> tuple[str, str] | None:
    """user, password for host from the first auth file that yields them."""
    for f in auth_files():
        try:
            doc = load_json(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            found = _from_file(doc, host, f)
            if found is not None:
                return found
    return None
