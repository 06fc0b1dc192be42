"""`cos cloud-init` as a command: exit codes, --validate, --strict, per-file isolation."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.cli import main
from cos.errors import ExitCode


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("COS_CONFIG_DIR", str(tmp_path / "etc-cos"))
    yield
    logger = logging.getLogger("cos")  # main() bound a handler to this test's stderr
    for h in list(logger.handlers):
        logger.removeHandler(h)
    logger.propagate = True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    return r


def cos(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out + err


GOOD = "stages:\n  boot:\n    - files: [{path: /etc/good, content: ok}]\n"
TYPO = "stages:\n  boot:\n    - files: [{path: /etc/typo, content: t, permsisions: 0600}]\n"


def test_unknown_key_warns_runs_and_exits_zero(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path
) -> None:
    f = tmp_path / "typo.yaml"
    f.write_text(TYPO)
    rc, out = cos(capsys, "cloud-init", "--root", str(root), "-s", "boot", str(f))
    assert rc == 0 and (root / "etc/typo").read_text() == "t"
    assert f"{f}:3:45: stages.boot[0].files[0].permsisions: unknown key" in out
    assert "did you mean 'permissions'?" in out and "1 warning(s)" in out


def test_strict_refuses_a_document_with_warnings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path
) -> None:
    (tmp_path / "a.yaml").write_text(TYPO)
    (tmp_path / "b.yaml").write_text(GOOD)
    argv = ["cloud-init", "--strict", "--root", str(root), "-s", "boot", str(tmp_path)]
    rc, out = cos(capsys, *argv)
    assert rc == ExitCode.STAGE and "1 invalid document(s)" in out
    assert not (root / "etc/typo").exists() and (root / "etc/good").exists()


def test_invalid_document_exits_stage_and_the_others_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path
) -> None:
    (tmp_path / "a.yaml").write_text("stages:\n  boot:\n    - files: [oops\n")
    (tmp_path / "b.yaml").write_text(GOOD)
    rc, out = cos(capsys, "cloud-init", "--root", str(root), "-s", "boot", str(tmp_path))
    assert rc == ExitCode.STAGE and f"{tmp_path / 'a.yaml'}:4:1: invalid YAML" in out
    assert (root / "etc/good").read_text() == "ok"


def test_validate_runs_nothing_and_makes_warnings_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good, typo = tmp_path / "good.yaml", tmp_path / "typo.yaml"
    good.write_text("stages:\n  boot:\n    - commands: ['touch /never-run']\n")
    typo.write_text(TYPO)
    rc, out = cos(capsys, "cloud-init", "--validate", str(good))
    assert rc == 0 and "1 document(s) valid" in out and not Path("/never-run").exists()
    rc, out = cos(capsys, "cloud-init", "--validate", str(good), str(typo))
    assert rc == ExitCode.CONFIG and f"{typo}:3:45: stages.boot[0].files[0].permsisions" in out


def test_fifo_given_directly_is_skipped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, root: Path
) -> None:
    os.mkfifo(tmp_path / "x.yaml")
    rc, out = cos(capsys, "cloud-init", "--root", str(root), str(tmp_path / "x.yaml"))
    assert rc == 0 and "not a regular file" in out


def test_install_section_runs_only_with_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cos.actions import install
    from cos.config import load_config

    f = tmp_path / "i.yaml"
    monkeypatch.setattr(install, "default_sources", lambda cfg, root, cmdline: [str(f)])
    cfg = load_config()
    f.write_text("#cloud-config\ninstall:\n  device: /dev/vda\n  grub_options: {x: y}\n")
    assert install.install_request_from_cloud_config(cfg) is None  # a device alone: no wipe
    f.write_text("#cloud-config\ninstall:\n  auto: true\n  device: /dev/vda\n  reboot: true\n")
    found = install.install_request_from_cloud_config(cfg)
    assert found is not None and found[0].device == Path("/dev/vda") and found[0].after == "reboot"
