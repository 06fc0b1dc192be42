from __future__ import annotations

import pytest

from cos.errors import ImageError
from cos.oci.reference import ImageRef, parse_ref

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "docker://127.0.0.1:5000/cos/vanilla:v1",
            ImageRef("docker", "127.0.0.1:5000/cos/vanilla", "v1"),
        ),
        ("127.0.0.1:5000/cos/vanilla", ImageRef("docker", "127.0.0.1:5000/cos/vanilla", "latest")),
        (f"registry.example/os@{D}", ImageRef("docker", "registry.example/os", None, D)),
        (f"localhost/os:v2@{D}", ImageRef("docker", "localhost/os", "v2", D)),
        ("oci:build/oci:vanilla", ImageRef("oci", "build/oci", "vanilla")),
        ("oci:/tmp/layout", ImageRef("oci", "/tmp/layout", "latest")),
        ("oci-archive:/tmp/img.tar:v1", ImageRef("oci-archive", "/tmp/img.tar", "v1")),
        ("oci-archive:img.tar", ImageRef("oci-archive", "img.tar", None)),
        ("dir:/srv/rootfs", ImageRef("dir", "/srv/rootfs")),
    ],
)
def test_parse(text: str, want: ImageRef) -> None:
    assert parse_ref(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "vanilla",
        "cos/vanilla:latest",
        "http://x/y",
        "oci:",
        "Host:5000/UPPER",
        "dir:",
        "oci-archive:",
        "docker-archive:x.tar",
    ],
)
def test_invalid_refs_have_a_hint(text: str) -> None:
    with pytest.raises(ImageError) as exc:
        parse_ref(text)
    assert exc.value.hint


def test_skopeo_spelling() -> None:
    assert parse_ref("127.0.0.1:5000/a/b:t").skopeo == "docker://127.0.0.1:5000/a/b:t"
    assert parse_ref("oci:/l:t").skopeo == "oci:/l:t"
    assert parse_ref("oci-archive:/a.tar:t").skopeo == "oci-archive:/a.tar:t"
    assert str(parse_ref("dir:/r")) == "dir:/r"
