"""e2e fixtures: the test image and its disk are built once (cached by recipe hash)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.images import BUILD, cached_disk, derive, ensure_e2e_image, push, tag_suffix
from tests.support.registry import registry
from tests.support.vm import VM, overlay

LOGS = BUILD / "e2e-logs"


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

    def make(
        firmware: str = "bios",
        base: Path | None = None,
        net: bool = False,
        extra_disks: tuple[Path, ...] = (),
        disk: Path | None = None,
        cdrom: Path | None = None,
    ) -> VM:
        """A VM on an overlay of base (default: the e2e disk), or on disk itself."""
        if disk is None:
            disk = overlay(base or e2e_disk, workdir / f"disk{len(made)}.qcow2")
        vm = VM(
            disk,
            workdir / f"vm{len(made)}",
            firmware=firmware,
            net=net,
            extra_disks=extra_disks,
            cdrom=cdrom,
        )
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and not failed.failed:
        for f in workdir.glob("*.qcow2"):
            f.unlink()


@dataclass(frozen=True)
class GuestRegistry:
    """The host's test registry as the guest reaches it, with its access log."""

    host: str  # 127.0.0.1:PORT
    guest: str  # 10.0.2.2:PORT
    log: Path
    v1: str  # refs as the guest writes them
    v2: str

    def blob_gets(self, repo: str) -> set[str]:
        return set(
            re.findall(rf"GET /v2/{repo}/blobs/(sha256:[0-9a-f]{{64}})", self.log.read_text())
        )


V2_OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
IMAGE_REPO=cos/e2e
IMAGE_TAG=v2
IMAGE=cos/e2e:v2
"""


@pytest.fixture(scope="session")
def guest_registry(
    e2e_disk: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuestRegistry]:
    """A registry holding cos/e2e:v1 (the image of the e2e disk) and v2 (one layer more)."""
    need("docker-registry")
    derive("e2e", "e2e-v2", {"/usr/lib/os-release": V2_OS_RELEASE, "/etc/cos-e2e-version": "v2\n"})
    workdir = tmp_path_factory.mktemp("guest-registry")
    with registry(workdir) as host:
        push("e2e", host, "cos/e2e:v1")
        push("e2e-v2", host, "cos/e2e:v2")
        guest = host.replace("127.0.0.1", "10.0.2.2")
        yield GuestRegistry(
            host, guest, workdir / "registry.log", f"{guest}/cos/e2e:v1", f"{guest}/cos/e2e:v2"
        )


# The second distribution of the suite (images/distros/): a machine installed from the
# default one upgrades to it and rolls back.
NEXT_RELEASE = "trixie"


@pytest.fixture(scope="session")
def guest_next_release(guest_registry: GuestRegistry) -> str:
    """cos/e2e:trixie (the e2e image built from Debian 13) in the guest registry;
    returns the reference as the guest writes it."""
    ensure_e2e_image(NEXT_RELEASE)
    push(f"e2e{tag_suffix(NEXT_RELEASE)}", guest_registry.host, f"cos/e2e:{NEXT_RELEASE}")
    return f"{guest_registry.guest}/cos/e2e:{NEXT_RELEASE}"
