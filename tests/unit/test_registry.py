"""Registry client pieces that need no registry: credentials lookup, digest checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from cos.errors import ImageError
from cos.oci import credentials, registry


def _auth(path: Path, entries: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "auths": {
                    k: {"auth": base64.b64encode(v.encode()).decode()} for k, v in entries.items()
                }
            }
        )
    )


def test_credentials_follow_the_containers_search_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    assert credentials.credentials("reg.example:5000") is None
    _auth(tmp_path / ".docker/config.json", {"https://reg.example:5000/v1/": "docker:pw1"})
    assert credentials.credentials("reg.example:5000") == ("docker", "pw1")
    _auth(tmp_path / ".config/containers/auth.json", {"reg.example:5000/team": "podman:pw:2"})
    assert credentials.credentials("reg.example:5000") == ("podman", "pw:2")
    explicit = tmp_path / "explicit.json"
    _auth(explicit, {"reg.example:5000": "ci:pw3"})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    assert credentials.credentials("reg.example:5000") == ("ci", "pw3")
    assert credentials.credentials("other.example") is None
    explicit.write_text("{broken")
    assert credentials.credentials("reg.example:5000") == ("podman", "pw:2")


@pytest.mark.parametrize(
    "bad",
    ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:" + "a" * 63],
)
def test_digests_are_validated_before_use_in_paths(bad: str) -> None:
    with pytest.raises(ImageError):
        registry.check_digest(bad)
    assert registry.check_digest("sha256:" + "a" * 64)
