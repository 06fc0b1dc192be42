"""A fault-injecting HTTP reverse proxy in front of a real registry, for tests.

Retry, resume and digest-verification code paths only run when the network misbehaves,
and a real registry never misbehaves on cue. This proxy sits between a client and a
plain-HTTP registry, forwards everything faithfully (so the registry stays the source of
truth for the protocol), and breaks chosen responses in precise, repeatable ways:

    with FaultProxy("127.0.0.1:5000") as proxy:
        proxy.inject(Fault("drop", times=2, after_bytes=1_000_000))
        pull(f"{proxy.addr}/name:tag")
        assert [r.status for r in proxy.requests] == [...]

Only the standard library is used, so it runs wherever the tests run.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import re
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal, NamedTuple

FaultKind = Literal["drop", "status", "truncate", "corrupt", "slow"]
KINDS: tuple[str, ...] = ("drop", "status", "truncate", "corrupt", "slow")

CHUNK = 64 * 1024
# Headers that describe one hop, not the message: never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
ERROR_BODY = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected"}]}).encode()


@dataclass
class Fault:
    """One misbehaviour, applied to the first `times` requests it matches.

    kind:        drop | status | truncate | corrupt | slow (see FaultProxy).
    times:       how many matching requests it fires for; afterwards requests pass.
    path:        regex searched in the request target (path + query).
    method:      request method it applies to; None for any. The default (GET on
                 /blobs/) targets blob downloads and leaves uploads alone.
    after_bytes: drop/truncate: body bytes delivered before the cut (default 0).
                 corrupt: offset of the flipped byte (default: middle of the body).
    delay:       slow: seconds before each chunk (default 0.1); other kinds: seconds
                 to wait before answering (default 0), to look like a stalled server.
    status:      status: the status answered (default 503; 429 adds Retry-After: 1).
    chunk:       slow: body bytes per chunk.
    fired:       how many requests it has broken so far (maintained by the proxy).
    """

    kind: FaultKind
    times: int = 1
    path: str = r"/blobs/"
    method: str | None = "GET"
    after_bytes: int | None = None
    delay: float | None = None
    status: int = 503
    chunk: int = CHUNK
    fired: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        if self.times < 1:
            raise ValueError("times must be at least 1")
        if self.chunk < 1:
            raise ValueError("chunk must be at least 1")
        self._regex = re.compile(self.path)

    def matches(self, method: str, target: str) -> bool:
        return (self.method is None or self.method == method) and bool(self._regex.search(target))


class Record(NamedTuple):
    """One request as the client saw it; a plain tuple so tests can unpack it."""

    method: str
    path: str  # path + query, as forwarded
    range: str | None  # the request's Range header
    status: int  # status sent to the client
    sent: int  # body bytes written to the client


class FaultProxy:
    """Reverse proxy on 127.0.0.1:<free port> to a plain-HTTP `upstream` ("host:port").

    Every request (method, target, headers, body) is forwarded on a fresh upstream
    connection and the response is streamed back. A request matching a queued Fault is
    broken instead; faults are tried in the order injected and each one is consumed after
    `times` hits. Kinds:

    drop      headers with the real Content-Length, `after_bytes` of body, then the
              connection is reset (RST, once the sent bytes are acknowledged): a link
              dying mid-blob. Clients see ECONNRESET after exactly `after_bytes` (a
              Python reader must use read1()/readinto() to keep them: a buffered
              read(n) throws away what it had gathered when the reset arrives).
    truncate  the same cut, but closed with an orderly FIN: clients see EOF short of
              Content-Length (http.client.IncompleteRead).
    status    `status` with a registry-style JSON error body; upstream is not contacted.
    corrupt   the full body, same length, one byte XOR 0xFF: wrong content for the digest.
    slow      the body in `chunk`-sized pieces, `delay` seconds before each one.

    Range requests pass through untouched (the registry answers 206 + Content-Range) and
    faults count bytes from the start of the body actually forwarded. Absolute Location
    headers naming the upstream are rewritten to the proxy, so redirects and upload URLs
    keep going through it.
    """

    def __init__(self, upstream: str, *, timeout: float = 60.0) -> None:
        self.upstream = upstream
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._faults: list[Fault] = []
        self._records: list[Record] = []
        self._in_flight = 0
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        port = self._server.server_address[1]
        self.addr = f"127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy-{port}",
            daemon=True,
        )
        self._thread.start()

    # -- public API -------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        """Queue faults; they apply in order, after any already queued."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending(self) -> list[Fault]:
        """Faults not yet used up."""
        with self._lock:
            return list(self._faults)

    def clear(self) -> None:
        """Forget queued faults and recorded requests (e.g. between test phases)."""
        with self._lock:
            self._faults.clear()
            self._records.clear()

    @property
    def requests(self) -> list[Record]:
        """A snapshot of the requests answered so far.

        A client can hold the last byte of a response a moment before the handler
        records it, so this first waits (briefly) for in-flight requests to finish.
        """
        self.wait_idle(timeout=2.0)
        with self._lock:
            return list(self._records)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being answered; False if that took too long."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def bytes_sent(self, prefix: str = "/") -> int:
        """Body bytes sent to clients for requests whose target starts with prefix."""
        return sum(r.sent for r in self.requests if r.path.startswith(prefix))

    def close(self) -> None:
        """Stop serving and cut open client connections, so nothing outlives the test."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- used by the handler ----------------------------------------------------------

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, target):
                    fault.fired += 1
                    if fault.fired >= fault.times:
                        self._faults.remove(fault)
                    return fault
        return None

    @contextlib.contextmanager
    def _request(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.notify_all()

    def _record(self, record: Record) -> None:
        with self._lock:
            self._records.append(record)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, addr: tuple[str, int], handler: type[_Handler], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.resets: set[socket.socket] = set()
        super().__init__(addr, handler)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Close sockets marked for reset without shutdown(SHUT_WR), which sends a FIN.

        With SO_LINGER set to zero the close itself then sends the RST.
        """
        if request in self.resets:
            self.resets.discard(request)
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Stay quiet about clients that hang up: with faults that is the normal case."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a registry: clients reuse connections
    server: _Server
    timeout = 120  # an idle keep-alive connection must not pin a thread forever

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest output is for failures; proxy.requests is the log."""

    # -- one request ------------------------------------------------------------------

    def _proxy(self) -> None:
        proxy = self.server.proxy
        with proxy._request():
            self._proxy_one(proxy)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _proxy

    def _proxy_one(self, proxy: FaultProxy) -> None:
        fault = proxy._take_fault(self.command, self.path)
        self._status, self._sent = 0, 0  # what the client got, for the record
        try:
            stall = fault.delay if fault is not None and fault.kind != "slow" else None
            if stall and proxy._stopping.wait(stall):
                self.close_connection = True  # close() is under way: answer nothing
            elif fault is not None and fault.kind == "status":
                self._answer_error(fault.status)
            else:
                self._forward(fault)
        except OSError:
            # The client went away mid-response (or close() cut it): stop quietly.
            self.close_connection = True
        finally:
            record = Record(
                self.command, self.path, self.headers.get("Range"), self._status, self._sent
            )
            proxy._record(record)

    def send_response_only(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response_only(code, message)

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self._sent += len(data)

    def _answer_error(self, status: int) -> None:
        if self._has_body():
            # The upload body stays unread, so this connection cannot carry another request.
            self.close_connection = True
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(ERROR_BODY)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        if status == 429:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self._write(ERROR_BODY)

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "0")
        return length != "0" or "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _forward(self, fault: Fault | None) -> None:
        host, _, port = self.server.proxy.upstream.rpartition(":")
        upstream = http.client.HTTPConnection(host, int(port), timeout=self.server.proxy.timeout)
        try:
            try:
                resp = self._send_upstream(upstream)
            except OSError as e:
                self._bad_gateway(e)
            else:
                self._relay(resp, fault)
        finally:
            upstream.close()

    def _send_upstream(self, upstream: http.client.HTTPConnection) -> http.client.HTTPResponse:
        # Host is forwarded as the client sent it, so the registry builds URLs that
        # point back at the proxy; Location rewriting covers clients that do not.
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked:
            upstream.putheader("Transfer-Encoding", "chunked")
        upstream.endheaders()
        if chunked:
            for piece in self._read_chunked_request():
                upstream.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            upstream.send(b"0\r\n\r\n")
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                piece = self.rfile.read(min(CHUNK, remaining))
                if not piece:
                    raise ConnectionError("client closed the connection mid-upload")
                upstream.send(piece)
                remaining -= len(piece)
        return upstream.getresponse()

    def _read_chunked_request(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            piece = self.rfile.read(size)
            self.rfile.readline()
            yield piece

    def _bad_gateway(self, error: OSError) -> None:
        body = json.dumps(
            {"errors": [{"code": "UNAVAILABLE", "message": f"upstream: {error}"}]}
        ).encode()
        self.send_response_only(502)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self._write(body)

    def _relay(self, resp: http.client.HTTPResponse, fault: Fault | None) -> None:
        """Send the upstream response on, broken as `fault` says."""
        length_header = resp.getheader("Content-Length")
        length = int(length_header) if length_header is not None else None
        bodiless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        if length is None and not bodiless:
            # Upstream chunked it; delimiting the body by closing keeps the relay simple.
            self.close_connection = True
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() in HOP_BY_HOP:
                continue
            if name.lower() == "location":
                value = value.replace(
                    f"//{self.server.proxy.upstream}", f"//{self.server.proxy.addr}"
                )
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if bodiless:
            return

        kind = fault.kind if fault is not None else None
        cut: int | None = None  # drop/truncate: body bytes to deliver
        flip: int | None = None  # corrupt: offset of the byte to invert
        chunk, delay = CHUNK, 0.0
        if fault is not None and kind in ("drop", "truncate"):
            cut = fault.after_bytes or 0
        elif fault is not None and kind == "corrupt":
            flip = fault.after_bytes if fault.after_bytes is not None else (length or 0) // 2
        elif fault is not None and kind == "slow":
            chunk = fault.chunk
            delay = fault.delay if fault.delay is not None else 0.1

        sent = 0  # body bytes taken from upstream
        while cut is None or sent < cut:
            want = chunk if cut is None else min(chunk, cut - sent)
            piece = resp.read(want)
            if not piece:
                break
            if flip is not None and sent <= flip < sent + len(piece):
                buf = bytearray(piece)
                buf[flip - sent] ^= 0xFF
                piece = bytes(buf)
            if delay and self.server.proxy._stopping.wait(delay):
                self.close_connection = True
                return
            self._write(piece)
            sent += len(piece)

        if kind == "drop":
            self._reset()
        elif kind == "truncate" or (length is not None and sent < length):
            self.close_connection = True  # finish() shuts down with a FIN

    def _reset(self) -> None:
        """Abort the connection with an RST once the client holds every byte sent.

        Waiting for the send queue to drain makes the cut deterministic: the client
        reads exactly what was written, then gets ECONNRESET, rather than losing
        unacknowledged data to the reset.
        """
        sock = self.connection
        deadline = time.monotonic() + 5
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
                if struct.unpack("i", raw)[0] == 0:
                    break
                time.sleep(0.002)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.server.resets.add(sock)  # closed without the usual FIN: see shutdown_request
