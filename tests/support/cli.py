"""Running cos as a user does, and checking its refusals; small images to run it on."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path


def tiny_layout(layout: Path, tag: str, files: dict[str, str]) -> str:
    """A small single-layer image in an OCI layout (umoci); returns its digest."""
    if not (layout / "index.json").exists():
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:{tag}"], check=True)
    tar_path = layout.parent / f"{tag}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), 0o644
            tar.addfile(info, io.BytesIO(text.encode()))
    subprocess.run(
        ["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(tar_path)], check=True
    )
    index = json.loads((layout / "index.json").read_text())
    return next(
        m["digest"]
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )


def push_manifest(layout: Path, tag: str, ref: str, compress: str | None = None) -> bytes:
    """Push an OCI layout's tag to a registry (layers recompressed when asked);
    returns the manifest the registry serves."""
    recompress = ["--dest-compress-format", compress] if compress else []
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *recompress,
            f"oci:{layout}:{tag}",
            f"docker://{ref}",
        ],
        check=True,
    )
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
        check=True,
        capture_output=True,
    ).stdout


def push(layout: Path, tag: str, ref: str) -> str:
    return "sha256:" + hashlib.sha256(push_manifest(layout, tag, ref)).hexdigest()


def cos(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cos", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=check,
    )


def refused(r: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-2].startswith("cos: error:") and words in lines[-2], r.stderr
    assert lines[-1].startswith("hint:") and "Traceback" not in r.stderr
