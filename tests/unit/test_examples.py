"""The examples shipped in examples/ are well-formed and run real cos commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cos.cli import build_parser
from cos.oci.reference import parse_ref

ROOT = Path(__file__).parents[2]
VERSION_VAR = "$(SYSTEM_UPGRADE_PLAN_LATEST_VERSION)"


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((ROOT / "examples/suc-plan.yaml").read_text()))
    assert len(docs) == 1 and isinstance(docs[0], dict)
    return docs[0]


def test_suc_plan_has_the_fields_the_crd_requires(plan: dict[str, Any]) -> None:
    assert plan["apiVersion"] == "upgrade.cattle.io/v1"
    assert plan["kind"] == "Plan"
    assert isinstance(plan["metadata"]["name"], str) and plan["metadata"]["namespace"]
    spec = plan["spec"]
    assert type(spec["concurrency"]) is int and spec["concurrency"] == 1
    assert isinstance(spec["serviceAccountName"], str) and spec["serviceAccountName"]
    # version or channel says which version the nodes go to
    assert isinstance(spec.get("version") or spec.get("channel"), str)
    exprs = spec["nodeSelector"]["matchExpressions"]
    assert exprs and all({"key", "operator"} <= set(e) for e in exprs)
    assert spec["cordon"] is True
    drain = spec["drain"]
    assert drain["force"] is True and drain["ignoreDaemonSets"] is True
    up = spec["upgrade"]
    assert isinstance(up["image"], str)
    assert all(isinstance(x, str) for x in [*up["command"], *up["args"]])
    # Only keys the CRD's ContainerSpec knows (unknown ones are dropped by the API server).
    assert set(up) <= {"image", "command", "args", "envs", "envFrom", "volumes", "securityContext"}


def test_suc_plan_runs_a_valid_cos_upgrade_of_the_os_image(plan: dict[str, Any]) -> None:
    spec = plan["spec"]
    up = spec["upgrade"]
    # The container enters the host (mounted at /host by the controller) and runs cos.
    assert up["command"] == ["chroot", "/host"]
    argv = [a.replace(VERSION_VAR, spec["version"]) for a in up["args"]]
    assert argv[0] == "cos"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "upgrade" and args.reboot
    # The image cos upgrades to is the image the Job runs, at the plan's version.
    assert VERSION_VAR in " ".join(up["args"])
    ref = parse_ref(args.system)
    assert ref.transport == "docker" and ref.tag == spec["version"]
    assert ref.name == parse_ref(up["image"]).name
    assert not re.search(r":[\w.-]+$", up["image"].rsplit("/", 1)[-1])  # no tag: SUC adds it
