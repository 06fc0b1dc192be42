"""Hostile and careless input: one clean error line, nothing the user named is lost."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cos import events
from cos.cli import main
from cos.cli.verbs import VERBS
from cos.errors import ExitCode
from tests.conftest import need
from tests.support.malicious_layers import Layer, oci_layout


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command reads its own config dir, never the host's /etc/cos."""
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    monkeypatch.setenv("COS_CONFIG_DIR", str(conf))
    return conf


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    """The `cos: error:` line of err, asserting it is the only one and not a bug report."""
    lines = [x for x in err.splitlines() if x.startswith("cos: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("cos: error: ") and "internal error" not in err, err
    return lines[0]


# --- pull-image never deletes what the user named ---------------------------------------


def test_failed_pull_keeps_the_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(dest))
    assert rc == ExitCode.IMAGE
    one_error(err)
    assert dest.is_dir()


@pytest.mark.parametrize("name", ["", ".", "..", "sub/.."])
def test_pull_refuses_names_that_are_not_a_new_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    here = tmp_path / "a" / "empty"
    (here / "sub").mkdir(parents=True)
    (here / "sub").rmdir()
    monkeypatch.chdir(here)
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", name)
    assert rc == ExitCode.USAGE
    assert "does not name a new directory" in one_error(err)
    assert here.is_dir() and here.parent.is_dir()


def test_pull_refuses_a_name_too_long(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(tmp_path / ("d" * 300)))
    assert rc == ExitCode.USAGE
    assert "longer than" in one_error(err)


def test_pull_refuses_a_symlink_to_an_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(tmp_path / "link"))
    assert rc == ExitCode.USAGE
    one_error(err)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").is_dir()


def _small_layout(tmp_path: Path) -> str:
    layout, _ = oci_layout(tmp_path, [Layer().dir("etc").file("etc/hello", b"hi\n").bytes()])
    return f"oci:{layout}:latest"


@pytest.mark.root
def test_pull_fills_an_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = _small_layout(tmp_path)
    dest = tmp_path / "rootfs"
    dest.mkdir()
    rc, _, err = run(capsys, "pull-image", image, str(dest))
    assert rc == 0, err
    assert (dest / "etc/hello").read_bytes() == b"hi\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc-cos", "oci", "rootfs"]


@pytest.mark.root
def test_pull_into_an_empty_mount_point(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    need("mount", "umount", root=True)
    image = _small_layout(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(mnt))
        assert rc == ExitCode.IMAGE and os.path.ismount(mnt)
        one_error(err)
        rc, _, err = run(capsys, "pull-image", image, str(mnt))
        assert rc == 0, err
        assert os.path.ismount(mnt) and (mnt / "etc/hello").read_bytes() == b"hi\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- --debug shows the traceback every internal error points at -------------------------


def _boom(args: object, cfg: object) -> int:
    raise RuntimeError("boom")


def test_debug_prints_the_traceback_of_an_internal_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(VERBS, "status", replace(VERBS["status"], run=_boom))
    rc, _, err = run(capsys, "status")
    assert rc == ExitCode.BUG and "Traceback" not in err and "--debug" in err
    rc, _, err = run(capsys, "--debug", "status")
    assert rc == ExitCode.BUG
    assert "Traceback (most recent call last)" in err and "in _boom" in err
    assert err.rstrip().endswith("RuntimeError: boom") and "error: traceback" not in err


# --- user:password@ never shows -----------------------------------------------------------

SECRET_REFS = [
    "user:hunter2@example.com/repo:tag",
    "docker://user:hunter2@example.com/repo:tag",
    "user:hunter2@localhost:5000/repo",
    "docker://tok:hunter2@[::1]:5000/repo@sha256:" + "a" * 64,
]


@pytest.mark.parametrize("ref", SECRET_REFS)
@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_credentials_in_a_reference_never_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ref: str, debug: list[str]
) -> None:
    rc, out, err = run(capsys, *debug, "pull-image", "--json", ref, str(tmp_path / "d"))
    assert rc == ExitCode.IMAGE
    assert "cannot carry credentials" in one_error(err)
    assert "hunter2" not in out + err
    start = json.loads(out.splitlines()[0])
    assert start["event"] == "start" and "@" not in start["args"]["image"].split("/")[0]
    for argv in (["inspect", ref], ["sign", ref, "--key", str(tmp_path / "k")]):
        rc, out, err = run(capsys, *debug, *argv)
        assert rc == ExitCode.IMAGE and "hunter2" not in out + err, err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("u:p@ss@h.io/r in (u:p@h.io/r)", "h.io/r in (h.io/r)"),
        ("https://u:p@r.io/v2/", "https://r.io/v2/"),
        ("busybox@sha256:abc docker://busybox@sha256:abc h.io/x@sha256:abc", None),
        ("oci:/tmp/u:p@x/layout:tag and mail@example.com", None),
    ],
)
def test_scrub_takes_credentials_only(text: str, shown: str | None) -> None:
    assert events.scrub(text) == (text if shown is None else shown)
