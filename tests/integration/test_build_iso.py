"""cos build-iso against the real image and tools (no VM; booting it is tests/e2e/test_iso.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support import events
from tests.support.images import LAYOUT

pytestmark = pytest.mark.integration


def _build_iso(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "etc-cos"
    conf.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "cos", "build-iso", f"oci:{LAYOUT}:vanilla", *argv, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "COS_CONFIG_DIR": str(conf)},
        check=False,
    )


def test_iso_with_json_events(tmp_path: Path, vanilla: str) -> None:
    need("grub-mkrescue", "xorriso", "mksquashfs", "mformat", "blkid")
    iso = tmp_path / "live.iso"
    r = _build_iso(tmp_path, "-o", str(iso), "--label", "JSON_LIVE")
    assert r.returncode == 0, r.stderr
    assert "ISO ready" in r.stderr

    evs = events.parse(r.stdout)
    steps = [e["step"] for e in events.of(evs, "step-end") if e["ok"]]
    assert steps[0] == f"Pulling oci:{LAYOUT}:vanilla"
    assert "Squashing the live root filesystem" in steps and steps[-1].startswith("Writing")
    assert events.result(evs) | {"time": ""} == {
        "event": "result",
        "time": "",
        "command": "build-iso",
        "image": f"oci:{LAYOUT}:vanilla",
        "digest": vanilla,
        "output": str(iso),
        "bytes": iso.stat().st_size,
        "ok": True,
        "exit_code": 0,
    }
    # What the result names is there: an ISO 9660 image with the label, and its checksum.
    label = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "LABEL", str(iso)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert label == "JSON_LIVE"
    with open(iso, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    assert (tmp_path / "live.iso.sha256").read_text() == f"{digest}  live.iso\n"
    assert {p.name for p in tmp_path.iterdir()} == {"live.iso", "live.iso.sha256", "etc-cos"}

    # Refused before any work: an error event and a result with the usage exit code.
    r = _build_iso(tmp_path, "-o", str(tmp_path / "nope/live.iso"))
    assert r.returncode == 2
    events.check_failed(r.stdout, 2, "does not exist")
