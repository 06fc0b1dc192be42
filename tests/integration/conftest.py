from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.images import BUILD, ensure_vanilla
from tests.support.registry import registry


@pytest.fixture(scope="session")
def vanilla() -> str:
    """Digest of build/oci:vanilla (built once per recipe)."""
    need("mmdebstrap", "buildah", "umoci", "skopeo", root=True)
    return ensure_vanilla()


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Storage and registry.log (access log) of the test registry."""
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def local_registry(registry_dir: Path) -> Iterator[str]:
    need("docker-registry", "skopeo")
    with registry(registry_dir) as addr:
        yield addr


@pytest.fixture
def cache_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty config dir and the shared pull cache."""
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    monkeypatch.setenv("COS_CONFIG_DIR", str(conf))
    monkeypatch.setenv("COS_CACHE_DIR", str(BUILD / "cache"))
    return conf
