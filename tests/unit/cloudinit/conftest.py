"""Fixtures shared by the cloud-init tests."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def http_files() -> Iterator[Callable[[dict[str, bytes]], str]]:
    """Serve fixed files over HTTP on 127.0.0.1; returns the base URL (404 otherwise)."""
    servers: list[http.server.HTTPServer] = []

    def serve(files: dict[str, bytes]) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.end_headers()
                if body is not None:
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server in servers:
        server.shutdown()
