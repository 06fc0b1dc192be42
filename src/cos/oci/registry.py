"""A small OCI distribution client: manifests and blobs, resumable and verified.

Why our own client for pulls instead of skopeo (which still pushes signatures and
copies between local layouts): an upgrade on a device must survive flaky links and
power cuts without re-downloading hundreds of MiB, and must never let a byte it has
not verified reach the layer store. skopeo as shipped by Debian 12 restarts an
interrupted blob from zero and hides byte counts. Here a blob streams into
`.<hex>.partial` beside its final name, its sha256 and size are checked as it
arrives, an interrupted transfer continues with `Range: bytes=N-` (a 200 reply
restarts cleanly), and only a verified, fsynced blob is renamed into place. The
protocol surface needed for pulling is small: ping, token/basic auth, manifests
by tag or digest, blobs with redirects (credentials never follow a redirect to
another host).

Credentials come from the files containers tools and docker use, credential
helpers included (`cos.oci.credentials`). Which host serves a read (mirrors, blocked
registries) is decided a level up, in `cos.oci.remote`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cos.errors import ImageError
from cos.oci import credentials
from cos.oci.digest import check_digest, sha256_digest, short_digest
from cos.oci.jsondoc import load_json

log = logging.getLogger("cos")

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
MAX_MANIFEST = 4 * 1024 * 1024
CHUNK = 1024 * 1024
ATTEMPTS = 5
TIMEOUT = 30.0
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')

T = TypeVar("T")
Progress = Callable[[int], None]  # called with the bytes of the blob held so far


class RegistryError(ImageError):
    """The registry refused or failed a request (after retries)."""

    def __init__(self, message: str, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class MismatchError(RegistryError):
    """What the registry sent does not match its digest: never a reason to try
    another mirror quietly, always an error."""


class _Retry(Exception):
    """A transient failure: another attempt may succeed."""

    def __init__(self, reason: str, wait: float = 0.0, mismatch: bool = False) -> None:
        super().__init__(reason)
        self.wait = wait
        self.mismatch = mismatch


@dataclass
class Client:
    """One registry host. Not thread-safe; cheap to create."""

    host: str
    tls_verify: bool = True
    timeout: float = TIMEOUT
    scheme: str | None = None
    _token: dict[str, str] = field(default_factory=dict)  # scope → Authorization value

    # -- connections ---------------------------------------------------------------------
    def _connect(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=self.timeout)
        ctx = ssl.create_default_context()
        if not self.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=ctx)

    def _base(self) -> str:
        """https, or http for a registry given with --tls-verify=false that speaks no TLS."""
        if self.scheme is None:
            schemes = ["https"] + ([] if self.tls_verify else ["http"])
            last: Exception | None = None
            for s in schemes:
                conn = self._connect(s, self.host)
                try:
                    conn.request("GET", "/v2/")
                    conn.getresponse().read()
                    self.scheme = s
                    break
                except (OSError, http.client.HTTPException) as exc:
                    last = exc
                finally:
                    conn.close()
            else:
                raise RegistryError(
                    f"registry {self.host} is not reachable: {last}",
                    hint="check the address"
                    + (" (plain-HTTP registry? add --tls-verify=false)" if self.tls_verify else ""),
                )
        return self.scheme

    # -- auth ----------------------------------------------------------------------------
    def _authorize(self, challenge: str, scope: str) -> str | None:
        kind, _, params = challenge.partition(" ")
        creds = credentials.credentials(self.host)
        if kind.lower() == "basic":
            if creds is None:
                return None
            return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if kind.lower() != "bearer":
            return None
        p = dict(_CHALLENGE.findall(params))
        if "realm" not in p:
            return None
        query = {"service": p.get("service", "")}
        if p.get("scope") or scope:
            query["scope"] = p.get("scope") or scope
        url = urllib.parse.urlsplit(p["realm"] + "?" + urllib.parse.urlencode(query))
        conn = self._connect(url.scheme, url.netloc)
        headers = {}
        if creds is not None:
            basic = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        try:
            conn.request("GET", f"{url.path}?{url.query}", headers=headers)
            resp = conn.getresponse()
            body = resp.read(1024 * 1024)
            if resp.status != 200:
                raise RegistryError(
                    f"registry {self.host}: token request refused ({resp.status})",
                    hint="check the credentials (auth.json, config.json or its credential helper)",
                    status=resp.status,
                )
            doc = load_json(body)
            token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise RegistryError(f"registry {self.host}: token request failed ({exc})") from exc
        finally:
            conn.close()
        # A token goes into a header line: anything but printable text is no token.
        return f"Bearer {token}" if isinstance(token, str) and token.isprintable() else None

    # -- requests ------------------------------------------------------------------------
    @contextmanager
    def _get(
        self, path: str, scope: str, headers: dict[str, str]
    ) -> Iterator[http.client.HTTPResponse]:
        """GET with auth and redirects; the response is open inside the block."""
        scheme, netloc, url, own = self._base(), self.host, path, True
        auth = self._token.get(scope)
        for _ in range(6):
            conn = self._connect(scheme, netloc)
            try:
                hdrs = dict(headers)
                if auth and own:
                    hdrs["Authorization"] = auth
                try:
                    conn.request("GET", url, headers=hdrs)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry(f"{type(exc).__name__}: {exc}") from exc
                if resp.status == 401 and own and auth is None:
                    challenge = resp.getheader("WWW-Authenticate", "")
                    resp.read()
                    auth = self._token[scope] = self._credentials(challenge, scope)
                    continue
                if resp.status in (301, 302, 303, 307, 308):
                    loc = urllib.parse.urljoin(
                        f"{scheme}://{netloc}{url}", resp.getheader("Location", "")
                    )
                    resp.read()
                    parts = urllib.parse.urlsplit(loc)
                    own = parts.netloc == self.host and own  # never carry credentials away
                    scheme, netloc = parts.scheme, parts.netloc
                    url = parts.path + (f"?{parts.query}" if parts.query else "")
                    continue
                if resp.status == 429 or resp.status >= 500:
                    wait = resp.getheader("Retry-After", "")
                    resp.read()
                    raise _Retry(f"HTTP {resp.status}", float(wait) if wait.isdigit() else 0.0)
                yield resp
                return
            finally:
                conn.close()
        raise RegistryError(f"registry {self.host}: too many redirects for {path}")

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        delay = 0.5
        for attempt in range(ATTEMPTS):
            try:
                return fn()
            except _Retry as exc:
                if attempt == ATTEMPTS - 1:
                    raise (MismatchError if exc.mismatch else RegistryError)(
                        f"{what}: {exc} (after {ATTEMPTS} attempts)",
                        hint="the registry or the network failed; run the command again",
                    ) from exc
                log.warning("%s: %s; retrying", what, exc)
                time.sleep(min(max(exc.wait, delay), 10.0))
                delay *= 2
        raise AssertionError("unreachable")

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        """Raw manifest bytes and media type (digest-checked when reference is one)."""
        scope = f"repository:{repo}:pull"
        what = f"{self.host}/{repo}:{reference}"

        def once() -> tuple[bytes, str]:
            with self._get(f"/v2/{repo}/manifests/{reference}", scope, {"Accept": ACCEPT}) as r:
                if r.status == 404:
                    raise RegistryError(f"{what}: manifest unknown", status=404)
                if r.status != 200:
                    raise RegistryError(f"{what}: HTTP {r.status}", status=r.status)
                data = _body(r, MAX_MANIFEST)
                if len(data) > MAX_MANIFEST:
                    raise RegistryError(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
                return data, (r.getheader("Content-Type") or "").split(";")[0].strip()

        data, media = self._retrying(what, once)
        if reference.startswith("sha256:"):
            got = sha256_digest(data)
            if got != reference:
                raise MismatchError(f"{what}: the registry sent a manifest with digest {got}")
        return data, media

    def blob(
        self, repo: str, digest: str, size: int, dest: Path, progress: Progress | None = None
    ) -> None:
        """Download a blob to dest, resuming dest's `.partial` sibling; verified, fsynced."""
        check_digest(digest)
        partial = dest.with_name(f".{dest.name}.partial")
        scope = f"repository:{repo}:pull"
        what = f"blob {short_digest(digest)} of {self.host}/{repo}"

        def once() -> None:
            have = partial.stat().st_size if partial.exists() else 0
            if have > size:
                partial.unlink()
                have = 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._get(f"/v2/{repo}/blobs/{digest}", scope, headers) as r:
                if r.status == 404:
                    raise RegistryError(f"{what}: blob unknown", status=404)
                if r.status == 416 and have == size:
                    pass  # all bytes are already here
                elif r.status == 206 and have:
                    pass
                elif r.status == 200:
                    have = 0  # no range support: start over
                else:
                    raise RegistryError(f"{what}: HTTP {r.status}", status=r.status)
                h = hashlib.sha256()
                with open(partial, "ab" if have else "wb") as out:
                    if have:
                        with open(partial, "rb") as old:
                            for chunk in iter(lambda: old.read(CHUNK), b""):
                                h.update(chunk)
                    if progress:
                        progress(have)
                    got = have
                    if r.status != 416:
                        try:
                            while chunk := r.read1(CHUNK):  # keeps what arrived before a reset
                                out.write(chunk)
                                h.update(chunk)
                                got += len(chunk)
                                if progress:
                                    progress(got)
                                if got > size:
                                    break
                        except (OSError, http.client.HTTPException) as exc:
                            out.flush()
                            raise _Retry(f"transfer interrupted at {got} bytes ({exc})") from exc
                    out.flush()
                    os.fsync(out.fileno())
                if got < size:
                    raise _Retry(f"transfer ended at {got} of {size} bytes")
                if got != size or "sha256:" + h.hexdigest() != digest:
                    partial.unlink(missing_ok=True)
                    raise _Retry("received bytes do not match the digest", mismatch=True)
            os.rename(partial, dest)

        self._retrying(what, once)

    # -- small reads and writes (signatures) ---------------------------------------------
    def _send(
        self, method: str, url: str, scope: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """One small request to this registry with auth; (status, headers, body ≤ 4 MiB)."""
        auth = self._token.get(scope)
        for _ in range(2):
            conn = self._connect(self._base(), self.host)
            try:
                hdrs = {**headers, **({"Authorization": auth} if auth else {})}
                if method in ("PUT", "POST", "PATCH"):
                    hdrs["Content-Length"] = str(len(body))
                conn.request(method, url, body=body or None, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read(MAX_MANIFEST + 1)
                got = {k.lower(): v for k, v in resp.getheaders()}
            except (OSError, http.client.HTTPException) as exc:
                raise RegistryError(f"registry {self.host}: {method} failed ({exc})") from exc
            finally:
                conn.close()
            if resp.status == 401 and auth is None:
                auth = self._token[scope] = self._credentials(
                    got.get("www-authenticate", ""), scope
                )
                continue
            return resp.status, got, data
        raise RegistryError(f"registry {self.host}: credentials refused", status=401)

    def _credentials(self, challenge: str, scope: str) -> str:
        """The Authorization value a 401 asks for, or the error that none is configured."""
        auth = self._authorize(challenge, scope)
        if auth is None:
            raise RegistryError(
                f"registry {self.host} asks for credentials",
                hint="log in (auth.json, ~/.docker/config.json or a credential helper)",
                status=401,
            )
        return auth

    def referrers(self, repo: str, digest: str) -> bytes | None:
        """The referrers API's index for digest; None when the registry has no such API."""
        status, headers, data = self._send(
            "GET",
            f"/v2/{repo}/referrers/{check_digest(digest)}",
            f"repository:{repo}:pull",
            {"Accept": "application/vnd.oci.image.index.v1+json"},
        )
        if status == 200 and headers.get("content-type", "").startswith(
            "application/vnd.oci.image.index.v1+json"
        ):
            return data
        if status in (200, 400, 404, 405):
            return None
        raise RegistryError(
            f"{self.host}/{repo}: referrers of {digest}: HTTP {status}", status=status
        )

    def small_blob(self, repo: str, digest: str, cap: int) -> bytes:
        """A blob of at most cap bytes, in memory, checked against its digest."""
        what = f"blob {short_digest(digest)} of {self.host}/{repo}"

        def once() -> bytes:
            with self._get(
                f"/v2/{repo}/blobs/{check_digest(digest)}", f"repository:{repo}:pull", {}
            ) as r:
                if r.status != 200:
                    raise RegistryError(f"{what}: HTTP {r.status}", status=r.status)
                data = _body(r, cap)
            if len(data) > cap:
                raise MismatchError(f"{what}: larger than {cap} bytes")
            if sha256_digest(data) != digest:
                raise _Retry("received bytes do not match the digest", mismatch=True)
            return data

        return self._retrying(what, once)

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload data as a blob (monolithic: POST, then PUT with the digest); its digest."""
        digest = sha256_digest(data)
        scope = f"repository:{repo}:pull,push"
        status, _, _ = self._send("HEAD", f"/v2/{repo}/blobs/{digest}", scope, {})
        if status == 200:
            return digest
        status, headers, _ = self._send("POST", f"/v2/{repo}/blobs/uploads/", scope, {})
        if status != 202 or "location" not in headers:
            raise RegistryError(
                f"{self.host}/{repo}: blob upload refused (HTTP {status})", status=status
            )
        loc = urllib.parse.urlsplit(
            urllib.parse.urljoin(f"{self._base()}://{self.host}/", headers["location"])
        )
        if loc.netloc != self.host:
            raise RegistryError(f"{self.host}/{repo}: blob upload redirected to {loc.netloc}")
        query = (loc.query + "&" if loc.query else "") + urllib.parse.urlencode({"digest": digest})
        status, _, _ = self._send(
            "PUT", f"{loc.path}?{query}", scope, {"Content-Type": "application/octet-stream"}, data
        )
        if status != 201:
            raise RegistryError(
                f"{self.host}/{repo}: blob upload failed (HTTP {status})", status=status
            )
        return digest

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> None:
        status, _, body = self._send(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            f"repository:{repo}:pull,push",
            {"Content-Type": media_type},
            data,
        )
        if status != 201:
            raise RegistryError(
                f"{self.host}/{repo}:{reference}: manifest refused (HTTP {status}: "
                f"{body[:200].decode(errors='replace')})",
                status=status,
            )


def _body(resp: http.client.HTTPResponse, cap: int) -> bytes:
    """At most cap + 1 bytes of a response body; a connection that breaks while it is
    read is a transient failure like one that breaks before the reply."""
    try:
        data = resp.read(cap + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(f"reply interrupted ({type(exc).__name__}: {exc})") from exc
    if len(data) <= cap and resp.length:  # the connection closed before Content-Length
        raise _Retry(f"reply cut short ({resp.length} bytes missing)")
    return data


def split_name(name: str) -> tuple[str, str]:
    """host, repository of an `host/repo` name."""
    host, _, repo = name.partition("/")
    return host, repo
