"""Shared test policy: under CI=true nothing may skip for a missing tool or privilege."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(*tools: str, root: bool = False) -> None:
    """Skip locally when a prerequisite is missing; fail under CI, where setup provides it."""
    missing = [t for t in tools if shutil.which(t) is None]
    problems = []
    if missing:
        problems.append(f"missing tools: {', '.join(missing)}")
    if root and os.geteuid() != 0:
        problems.append("needs root")
    if problems:
        msg = "; ".join(problems) + " (run scripts/setup-host.sh)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
