"""One image's repository as cos reads it: through its mirrors, then its registry.

Every read of a registry (manifests, blobs, `.sig` tags, referrers) goes through a
`Repository`, so registries.conf applies to all of them alike. Each request walks
the sources in order and the first that answers wins. A mirror that cannot serve
it (unreachable, 5xx after retries, 404, a login it lacks) is skipped with a warning;
one that is unreachable or failing is not asked again in this run, so a dead
mirror costs one timeout, not one per blob. Content that does not match its digest is
an error from a mirror as from the registry: a mirror is trusted for availability,
never for content. The registry's own answer is final, errors included.

Writes (cos sign) go to the name as given, which is also where the reads that
prepare them go (`write=True`): appending to a stale mirror's copy would lose
entries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cos.oci import registries
from cos.oci.digest import short_digest
from cos.oci.reference import ImageRef
from cos.oci.registries import RegistriesConf, Source
from cos.oci.registry import Client, MismatchError, Progress, RegistryError

log = logging.getLogger("cos")

T = TypeVar("T")
_down: set[str] = set()  # mirrors (name) found unreachable or failing in this run
_told: set[tuple[str, str]] = set()


def forget() -> None:
    """Forget the mirrors found down and the mirror choices announced (tests)."""
    _down.clear()
    _told.clear()


class Repository:
    """The repository of ref, read through the configured mirrors."""

    def __init__(
        self,
        ref: ImageRef,
        tls_verify: bool = True,
        *,
        write: bool = False,
        conf: RegistriesConf | None = None,
    ) -> None:
        conf = registries.load() if conf is None else conf
        self.ref = ref
        self.sources = [conf.origin(ref)] if write else conf.sources(ref)
        self._tls = tls_verify
        self._clients: dict[tuple[str, bool], Client] = {}

    def _client(self, src: Source) -> Client:
        key = (src.host, self._tls and not src.insecure)
        if key not in self._clients:
            self._clients[key] = Client(*key)
        return self._clients[key]

    def _walk(self, what: str, fn: Callable[[Client, str], T]) -> T:
        usable = [s for s in self.sources if not s.mirror or s.name not in _down]
        for i, src in enumerate(usable):
            try:
                got = fn(self._client(src), src.repo)
            except MismatchError:
                raise
            except RegistryError as exc:
                if not src.mirror:
                    raise
                failing = exc.status is None or exc.status >= 500
                if failing:
                    _down.add(src.name)
                log.warning(
                    "mirror %s: %s; %s%s",
                    src.host,
                    exc.message,
                    f"reading {what} from {usable[i + 1].host}",
                    " (this mirror is not asked again in this run)" if failing else "",
                )
                continue
            if src.mirror and (self.ref.name, src.name) not in _told:
                _told.add((self.ref.name, src.name))
                log.info("Reading %s through mirror %s", self.ref.name, src.name)
            return got
        raise AssertionError("the registry itself is always the last source")

    # -- reads -------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str]:
        return self._walk(f"manifest {reference}", lambda c, repo: c.manifest(repo, reference))

    def blob(self, digest: str, size: int, dest: Path, progress: Progress | None = None) -> None:
        self._walk(
            f"blob {short_digest(digest)}",
            lambda c, repo: c.blob(repo, digest, size, dest, progress),
        )

    def small_blob(self, digest: str, cap: int) -> bytes:
        return self._walk(
            f"blob {short_digest(digest)}", lambda c, repo: c.small_blob(repo, digest, cap)
        )

    def referrers(self, digest: str) -> bytes | None:
        """The referrers API's answer of the first source that gives one (None: no API
        there; the caller then reads the tag schema, through the mirrors again)."""
        return self._walk(
            f"referrers of {short_digest(digest)}", lambda c, repo: c.referrers(repo, digest)
        )

    # -- writes (write=True) -----------------------------------------------------
    def _origin(self) -> tuple[Client, str]:
        src = self.sources[-1]
        return self._client(src), src.repo

    def put_blob(self, data: bytes) -> str:
        client, repo = self._origin()
        return client.put_blob(repo, data)

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> None:
        client, repo = self._origin()
        client.put_manifest(repo, reference, data, media_type)
