"""A real distribution registry (Debian's docker-registry) on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def registry(workdir: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """Start a registry with its storage in workdir; yields host:port.

    With users (name → password), the registry asks for HTTP basic auth (htpasswd)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yml"
    cfg.write_text(
        "version: 0.1\nlog: {level: info}\n"
        "storage:\n"
        f"  filesystem: {{rootdirectory: {workdir / 'data'}}}\n"
        "  delete: {enabled: true}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    if users:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # bcrypt via libxcrypt; the registry accepts only bcrypt hashes

        htpasswd = workdir / "htpasswd"
        htpasswd.write_text(
            "".join(
                f"{u}:{crypt.crypt(p, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n"
                for u, p in users.items()
            )
        )
        with cfg.open("a") as f:
            f.write(f"auth:\n  htpasswd: {{realm: test, path: {htpasswd}}}\n")
    log = open(workdir / "registry.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (401 when it asks for credentials)
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("registry did not start; see registry.log") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


_ACCESS = re.compile(r'"GET /v2/(\S+)/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (20[06]) (\d+)')


def served_blobs(log: Path, repo: str, offset: int = 0) -> dict[str, int]:
    """Bytes of each blob of repo the registry served (its access log, from offset on)."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    out: dict[str, int] = {}
    for name, digest, _, size in _ACCESS.findall(text):
        if name == repo:
            out[digest] = out.get(digest, 0) + int(size)
    return out
