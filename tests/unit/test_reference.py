from __future__ import annotations

import pytest

from cos.errors import ImageError
from cos.oci.reference import ImageRef, Transport, parse_ref

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (
            "docker://127.0.0.1:5000/cos/vanilla:v1",
            ImageRef(Transport.DOCKER, "127.0.0.1:5000/cos/vanilla", "v1"),
        ),
        (
            "127.0.0.1:5000/cos/vanilla",
            ImageRef(Transport.DOCKER, "127.0.0.1:5000/cos/vanilla", "latest"),
        ),
        (f"registry.example/os@{D}", ImageRef(Transport.DOCKER, "registry.example/os", None, D)),
        (f"localhost/os:v2@{D}", ImageRef(Transport.DOCKER, "localhost/os", "v2", D)),
        ("oci:build/oci:vanilla", ImageRef(Transport.OCI, "build/oci", "vanilla")),
        ("oci:/tmp/layout", ImageRef(Transport.OCI, "/tmp/layout", "latest")),
        ("oci-archive:/tmp/img.tar:v1", ImageRef(Transport.OCI_ARCHIVE, "/tmp/img.tar", "v1")),
        ("oci-archive:img.tar", ImageRef(Transport.OCI_ARCHIVE, "img.tar", None)),
        ("dir:/srv/rootfs", ImageRef(Transport.DIR, "/srv/rootfs")),
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


def test_transport_is_its_spelling() -> None:
    """Messages and argv format the transport; callers compare it with plain strings."""
    ref = parse_ref("oci-archive:img.tar")
    assert ref.transport == "oci-archive" and f"{ref.transport}:" == "oci-archive:"
    assert ref.skopeo == "oci-archive:img.tar" and str(ref) == "oci-archive:img.tar"
