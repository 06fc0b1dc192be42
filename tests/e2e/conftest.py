"""e2e fixtures: the test image and its disk are built once (cached by recipe hash)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.e2e.vm import VM, overlay
from tests.support.images import BUILD, LAYOUT, REPO, ensure_e2e_image, tree_hash

LOGS = BUILD / "e2e-logs"


def cached_disk(name: str, cloud_config: str | None = None) -> Path:
    """An e2e disk (optionally built with --cloud-init), cached by image digest, toolkit
    and cloud-config, so the suite builds each once."""
    digest = ensure_e2e_image()
    key = hashlib.sha256(
        (digest + tree_hash(REPO / "src/cos") + (cloud_config or "")).encode()
    ).hexdigest()[:16]
    disk = BUILD / "e2e" / f"{name}-{key}.raw"
    if not disk.exists():
        disk.parent.mkdir(parents=True, exist_ok=True)
        for old in disk.parent.glob(f"{name}-*"):
            old.unlink()
        argv = [sys.executable, "-m", "cos", "build-disk", f"oci:{LAYOUT}:e2e", "-o", str(disk)]
        if cloud_config is not None:
            cfg = disk.with_suffix(".yaml")
            cfg.write_text(cloud_config)
            argv += ["--cloud-init", str(cfg)]
        subprocess.run(argv, check=True, env={**os.environ, "COS_CACHE_DIR": str(BUILD / "cache")})
    return disk


@pytest.fixture(scope="session")
def e2e_disk() -> Path:
    need("qemu-system-x86_64", "qemu-img", "buildah", "mmdebstrap", "umoci", "skopeo", root=True)
    return cached_disk("disk")


@pytest.fixture
def vm_factory(e2e_disk: Path, request: pytest.FixtureRequest) -> Iterator[object]:
    """Make VMs on pristine overlays of the e2e disk; logs kept in build/e2e-logs/<test>."""
    made: list[VM] = []
    workdir = LOGS / request.node.name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)

    def make(firmware: str = "bios", base: Path | None = None) -> VM:
        disk = overlay(base or e2e_disk, workdir / f"disk{len(made)}.qcow2")
        vm = VM(disk, workdir, firmware=firmware)
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and not failed.failed:
        for f in workdir.glob("*.qcow2"):
            f.unlink()
