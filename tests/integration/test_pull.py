"""Pulling through every transport: registry (own client), oci-archive, dir, multi-platform."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import events
from tests.support.cli import cos, refused, tiny_layout

pytestmark = pytest.mark.integration


@pytest.fixture
def private_cache(tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_oci_archive_and_dir_sources(tmp_path: Path, private_cache: Path) -> None:
    layout = tmp_path / "oci"
    tiny_layout(layout, "a", {"etc/hello": "archive\n"})
    archive = tmp_path / "img.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:a", f"oci-archive:{archive}:a"], check=True
    )
    cos("pull-image", f"oci-archive:{archive}:a", str(tmp_path / "t1"))
    assert (tmp_path / "t1/etc/hello").read_text() == "archive\n"
    info = json.loads(cos("inspect", "--json", f"oci-archive:{archive}:a").stdout)
    assert info["layers"] and info["digest"].startswith("sha256:")

    os.chmod(tmp_path / "t1/etc/hello", 0o600)
    os.chown(tmp_path / "t1/etc/hello", 123, 456)
    cos("pull-image", f"dir:{tmp_path / 't1'}", str(tmp_path / "t2"))
    st = (tmp_path / "t2/etc/hello").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 123, 456)

    refused(
        cos("pull-image", f"oci-archive:{tmp_path}/nope.tar", str(tmp_path / "t3"), check=False),
        4,
        "does not exist",
    )
    refused(
        cos("pull-image", f"dir:{tmp_path}/nope", str(tmp_path / "t3"), check=False),
        4,
        "does not exist",
    )
    refused(
        cos("pull-image", f"oci:{layout}:a", str(tmp_path / "t1"), check=False),
        2,
        "not an empty directory",
    )
    assert not (tmp_path / "t3").exists()


def _index(layout: Path, tag: str, variants: dict[str, str]) -> None:
    """Add tag: an image index over layout tags, one per architecture."""
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                **{k: by_tag[t][k] for k in ("mediaType", "digest", "size")},
                "platform": {"os": "linux", "architecture": arch},
            }
            for arch, t in variants.items()
        ],
    }
    raw = json.dumps(doc).encode()
    h = hashlib.sha256(raw).hexdigest()
    (layout / "blobs/sha256" / h).write_bytes(raw)
    index["manifests"].append(
        {
            "mediaType": doc["mediaType"],
            "digest": f"sha256:{h}",
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))


def test_multi_platform_index_picks_the_platform(
    tmp_path: Path, local_registry: str, private_cache: Path
) -> None:
    layout = tmp_path / "oci"
    tiny_layout(layout, "amd", {"arch": "amd64"})
    tiny_layout(layout, "arm", {"arch": "arm64"})
    _index(layout, "multi", {"amd64": "amd", "arm64": "arm"})
    ref = f"{local_registry}/pull/multi:1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            f"oci:{layout}:multi",
            f"docker://{ref}",
        ],
        check=True,
    )
    cos("pull-image", "--tls-verify=false", "--platform", "linux/arm64", ref, str(tmp_path / "arm"))
    assert (tmp_path / "arm/arch").read_text() == "arm64"
    cos("pull-image", "--tls-verify=false", "--platform", "linux/amd64", ref, str(tmp_path / "amd"))
    assert (tmp_path / "amd/arch").read_text() == "amd64"
    r = cos(
        "pull-image",
        "--tls-verify=false",
        "--platform",
        "linux/s390x",
        ref,
        str(tmp_path / "x"),
        check=False,
    )
    refused(r, 4, "no linux/s390x variant")
    refused(cos("inspect", "--platform", "amd64", ref, check=False), 3, "not OS/ARCH")


def test_registry_credentials_from_auth_json(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.registry import registry

    layout = tmp_path / "oci"
    tiny_layout(layout, "a", {"f": "behind a login\n"})
    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"alice:pa55-w0rd").decode()
    with registry(tmp_path / "reg", users={"alice": "pa55-w0rd"}) as host:
        auth.write_text(json.dumps({"auths": {host: {"auth": token}}}))
        ref = f"{host}/private/a:1"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-authfile",
                str(auth),
                f"oci:{layout}:a",
                f"docker://{ref}",
            ],
            check=True,
        )
        r = cos(
            "pull-image", "--json", "--tls-verify=false", ref, str(tmp_path / "t0"), check=False
        )
        refused(r, 4, "asks for credentials")
        events.check_failed(r.stdout, 4, "asks for credentials")
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
        r = cos("--debug", "pull-image", "--json", "--tls-verify=false", ref, str(tmp_path / "t1"))
        assert (tmp_path / "t1/f").read_text() == "behind a login\n"
        assert "pa55-w0rd" not in r.stderr + r.stdout and token not in r.stderr + r.stdout
        # --json: stdout is the event stream alone; every pulled blob's bytes are reported
        # up to its size; the result names what was pulled.
        evs = events.parse(r.stdout)
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            check=True,
            capture_output=True,
        ).stdout
        manifest = json.loads(raw)
        blobs = {x["digest"]: x["size"] for x in [manifest["config"], *manifest["layers"]]}
        assert events.check_pulled(evs) == blobs
        assert [e["step"] for e in events.of(evs, "step-end") if e["ok"]] == [
            f"Pulling {ref}",
            f"Unpacking into {tmp_path / 't1'}",
        ]
        res = events.result(evs)
        assert (res["ok"], res["exit_code"], res["image"], res["dest"]) == (
            True,
            0,
            ref,
            str(tmp_path / "t1"),
        )
        assert res["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
