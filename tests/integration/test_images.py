"""make vanilla: the image recipes and their push to a registry."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.images import LAYOUT, REPO, layout_digest

pytestmark = pytest.mark.integration


def test_make_vanilla_pushes_base_and_vanilla(vanilla: str, local_registry: str) -> None:
    subprocess.run(
        ["bash", str(REPO / "images/build.sh")],
        check=True,
        cwd=REPO,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "REGISTRY": local_registry},
    )
    for tag in ("base", "vanilla"):
        info = json.loads(
            subprocess.run(
                [
                    "skopeo",
                    "inspect",
                    "--tls-verify=false",
                    f"docker://{local_registry}/cos/{tag}:latest",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert info["Layers"], tag
        assert layout_digest(tag) is not None
    # The derivative is the base plus one layer (cos init), not a copy of it.
    base = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{LAYOUT}:base"], check=True, capture_output=True, text=True
        ).stdout
    )["Layers"]
    van = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{LAYOUT}:vanilla"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["Layers"]
    assert van[: len(base)] == base and len(van) == len(base) + 1


def test_images_carry_their_identity(vanilla: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tree = tmp_path / "tree"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{LAYOUT}:vanilla", str(tree)],
        check=True,
        capture_output=True,
    )
    release = (tree / "usr/lib/os-release").read_text()
    assert "IMAGE_REPO=cos/vanilla" in release and "IMAGE=cos/vanilla:latest" in release
    assert release.count("IMAGE_REPO=") == 1
    assert (tree / "usr/bin/cos").is_file()
    assert (tree / "usr/lib/cos/site/cos/__main__.py").is_file()
    assert (tree / "usr/lib/dracut/modules.d/90cos/cos-mount.sh").is_file()
    assert (tree / "boot/initrd").is_symlink() and (tree / "boot/vmlinuz").is_symlink()
    shadow = (tree / "etc/shadow").read_text().splitlines()
    root = next(line for line in shadow if line.startswith("root:"))
    assert root.split(":")[1][:1] in ("*", "!")  # locked: no default password
