"""A registry stand-in on 127.0.0.1 for unit tests: it serves whatever bytes it is given.

The real registry (tests/support/registry.py) refuses malformed manifests; this one
serves hostile documents, lying content types, odd token replies. Plain HTTP: tests
point the client at it with `plain_http`.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from cos.oci import registries, registry


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    length: int | None = None  # Content-Length, when it is to lie (a reply cut short)


@dataclass
class StubRegistry:
    host: str = ""
    routes: dict[str, list[Reply]] = field(default_factory=dict)  # path -> replies, in turn
    requests: list[str] = field(default_factory=list)  # paths asked for, in order

    def serve(self, path: str, body: bytes, status: int = 200, **headers: str) -> None:
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        self.routes[path] = [Reply(status, body, named)]

    def reply(self, path: str) -> Reply | None:
        """The next reply for path: each one once, the last one for good."""
        replies = self.routes.get(path)
        if not replies:
            return None
        return replies.pop(0) if len(replies) > 1 else replies[0]


@contextmanager
def stub_registry() -> Iterator[StubRegistry]:
    stub = StubRegistry()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stub.requests.append(self.path)
            reply = stub.reply(self.path)
            if reply is None:
                reply = Reply(200, b"{}") if self.path == "/v2/" else Reply(404, b"not found")
            self.send_response(reply.status)
            headers = {"Content-Type": "application/octet-stream", **reply.headers}
            for k, v in headers.items():
                self.send_header(k, v)
            length = len(reply.body) if reply.length is None else reply.length
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    stub.host = f"127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def plain_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry client speaks plain HTTP at once (no TLS probe) and does not retry;
    reads go to the stub itself, whatever registries.conf this machine has."""
    monkeypatch.setattr(registry.Client, "_base", lambda self: "http")
    monkeypatch.setattr(registry, "ATTEMPTS", 1)
    monkeypatch.setattr(registries, "load", lambda *a, **kw: registries.RegistriesConf())
