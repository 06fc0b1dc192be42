"""The README's "Building your own image" commands, run as written: `make registry`, the
base image pushed by `make vanilla REGISTRY=…`, the README's Containerfile built and
pushed with buildah, and `cos build-disk` from the registry with a cloud-config.

Minutes of package downloads and image building: `make test-extended` runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.unit.test_readme import README, ROOT, blocks, commands

pytestmark = [pytest.mark.integration, pytest.mark.extended]

USER_YAML = """#cloud-config
name: readme
stages:
  initramfs:
    - hostname: readme-node
"""


def _section() -> list[list[str]]:
    """The commands of the sh block that follows the README's Containerfile."""
    after = README.split("## Building your own image", 1)[1]
    out = commands([after.split("```sh\n", 1)[1].split("```", 1)[0]])
    assert [c[0] for c in out][:2] == ["make", "make"] and "buildah" in [c[0] for c in out]
    return out


def _run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, f"README: `{shlex.join(cmd)}` failed:\n{r.stdout[-2000:]}{r.stderr}"


def test_build_push_and_disk_as_the_readme_says(tmp_path: Path) -> None:
    need("buildah", "skopeo", "docker-registry", "mmdebstrap", root=True)
    section = _section()
    work = tmp_path / "me"
    work.mkdir()
    (work / "Containerfile").write_text(blocks("Dockerfile")[0])
    (work / "user.yaml").write_text(USER_YAML)
    try:
        for cmd in section:
            # `make` and `oci:build/...` are relative to the repository; the image
            # build runs where its Containerfile is.
            here = ROOT if cmd[0] == "make" or any("oci:build/" in a for a in cmd) else work
            _run(cmd, here)
    finally:
        subprocess.run(["make", "registry-stop"], cwd=ROOT, capture_output=True, check=False)
    assert (work / "os.raw").stat().st_size > 0
    assert (ROOT / "os.qcow2").stat().st_size > 0
    (ROOT / "os.qcow2").unlink()
