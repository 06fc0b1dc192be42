"""Shared test policy: the tiers, and no skip going unnoticed.

The tier of a test is the directory it lives in: everything under tests/integration is
marked `integration`, everything under tests/e2e `e2e`, so no module can forget its
marker. A bare `pytest` collects tests/unit alone (pyproject's testpaths); `make test`
names tests/ and runs every tier.

A test that needs a tool or root says so with need() or the `root` marker: locally it
skips with the reason shown by -ra; under CI=true every skip is a failure, because the
CI host is set up to run everything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
TESTS = Path(__file__).resolve().parent
TIERS = ("integration", "e2e")  # directories under tests/ named after their marker


def need(*tools: str, root: bool = False) -> None:
    """Skip when a prerequisite is missing, naming it (a failure under CI, see below)."""
    missing = [t for t in tools if shutil.which(t) is None]
    problems = []
    if missing:
        names = ", ".join(missing)
        problems.append(f"missing tools: {names} (scripts/setup-host.sh installs them)")
    if root and os.geteuid() != 0:
        problems.append("needs root (ownership, device nodes, loop devices)")
    if problems:
        pytest.skip("; ".join(problems))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its directory's tier, before -m selects on the markers."""
    for item in items:
        if item.path.is_relative_to(TESTS):
            tier = item.path.relative_to(TESTS).parts[0]
            if tier in TIERS:
                item.add_marker(tier)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The `root` marker: need(root=True) before the test's fixtures run."""
    if item.get_closest_marker("root") is not None:
        need(root=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Keep each phase's report on the item (fixtures read rep_call); fail skips under CI."""
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if IN_CI and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, where nothing may skip: {reason}"
    setattr(item, f"rep_{rep.when}", rep)
