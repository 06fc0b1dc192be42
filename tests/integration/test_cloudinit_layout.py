"""The layout plugin against a real loop-backed disk: grow the last partition, add one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cos.cloudinit.loader import load_text
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import run_stage
from tests.conftest import need

pytestmark = pytest.mark.integration


def test_expand_and_add_partitions(tmp_path: Path) -> None:
    need("sgdisk", "sfdisk", "partx", "losetup", "resize2fs", root=True)
    img = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "256M", str(img)], check=True)
    subprocess.run(
        ["sgdisk", "--new=1:2048:+32M", "--change-name=1:first", str(img)],
        check=True,
        capture_output=True,
    )
    loop = subprocess.run(
        ["losetup", "-f", "--show", "-P", str(img)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["partx", "-a", loop], check=False, capture_output=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", f"{loop}p1"], check=True)
        doc = f"""
stages:
  boot:
    - layout:
        device: {{path: {loop}}}
        expand_partition: {{size: 64}}
        add_partitions:
          - {{fsLabel: COS_TESTDATA, pLabel: testdata, size: 32, filesystem: ext4}}
"""
        loaded = load_text(doc, "layout.yaml")
        assert not loaded.errors
        summary = run_stage("boot", loaded.documents, Context())
        assert summary.count("ran") == 1, summary.results
        table = json.loads(
            subprocess.run(
                ["sfdisk", "--json", loop], check=True, capture_output=True, text=True
            ).stdout
        )
        parts = table["partitiontable"]["partitions"]
        assert [p.get("name") for p in parts] == ["first", "testdata"]
        assert parts[0]["size"] * 512 == 64 * 2**20 and parts[1]["size"] * 512 == 32 * 2**20
        label = subprocess.run(
            ["blkid", "-o", "value", "-s", "LABEL", f"{loop}p2"], capture_output=True, text=True
        ).stdout.strip()
        assert label == "COS_TESTDATA"
        # A second run finds the partition there and adds nothing.
        run_stage("boot", load_text(doc, "layout.yaml").documents, Context())
        again = json.loads(
            subprocess.run(
                ["sfdisk", "--json", loop], check=True, capture_output=True, text=True
            ).stdout
        )
        assert len(again["partitiontable"]["partitions"]) == 2
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
