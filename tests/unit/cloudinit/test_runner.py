from __future__ import annotations

from pathlib import Path

import pytest

from cos.cloudinit.loader import load_text
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import run_stage, skip_reason


def _docs(*texts: str):  # type: ignore[no-untyped-def]
    docs = []
    for i, t in enumerate(texts):
        r = load_text(t, f"{i}.yaml")
        assert not r.errors, r.errors
        docs += r.documents
    return docs


def test_before_main_after_and_file_order(tmp_path: Path) -> None:
    docs = _docs(
        "name: a\nstages:\n  boot.after: [{name: z, files: [{path: /f3, content: ''}]}]\n"
        "  boot: [{name: y, files: [{path: /f2, content: ''}]}]\n",
        "name: b\nstages:\n  boot.before: [{name: x, files: [{path: /f1, content: ''}]}]\n"
        "  boot: [{name: w, files: [{path: /f2b, content: ''}]}]\n",
    )
    s = run_stage("boot", docs, Context(root=tmp_path))
    assert [r.op for r in s.results] == ["b.x", "a.y", "b.w", "a.z"]
    assert [r.stage for r in s.results] == ["boot.before", "boot", "boot", "boot.after"]


def test_after_reorders_steps(tmp_path: Path) -> None:
    docs = _docs(
        "name: d\nstages:\n  boot:\n"
        "    - {name: second, after: [{name: d.first}], directories: [{path: /2}]}\n"
        "    - {name: first, directories: [{path: /1}]}\n"
    )
    s = run_stage("boot", docs, Context(root=tmp_path))
    assert [r.op for r in s.results] == ["d.first", "d.second"]


def test_conditions(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12"\nVERSION_ID="12"\n')
    (tmp_path / "present").write_text("")
    ctx = Context(root=tmp_path)
    assert skip_reason({"only_os": "Debian"}, ctx) is None
    assert "does not match" in (skip_reason({"only_os": "Ubuntu"}, ctx) or "")
    assert skip_reason({"only_os_version": "^12$"}, ctx) is None
    assert skip_reason({"only_arch": "amd64|arm64"}, ctx) is None
    assert "not a valid regular expression" in (skip_reason({"node": "(?!x)["}, ctx) or "")
    assert skip_reason({"if_files": {"all": ["/present"]}}, ctx) is None
    assert skip_reason({"if_files": {"none": ["/present"]}}, ctx) is not None
    assert skip_reason({"if_files": {"any": ["/missing"]}}, ctx) is not None


@pytest.mark.root
def test_failures_are_recorded_and_later_steps_still_run(tmp_path: Path) -> None:
    docs = _docs(
        "name: f\nstages:\n  boot:\n"
        "    - {name: bad, files: [{path: relative, content: x}]}\n"
        "    - {name: good, files: [{path: /ok, content: x}]}\n"
    )
    s = run_stage("boot", docs, Context(root=tmp_path))
    assert [r.status for r in s.results] == ["failed", "ran"]
    assert "must be an absolute path" in s.results[0].detail and s.failed
    assert (tmp_path / "ok").exists()
