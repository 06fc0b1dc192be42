"""The first-boot cloud-config of an expandable disk (build-disk --expandable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cos.actions.build_disk import EXPAND_CONFIG, expand_config
from cos.cli import main
from cos.cloudinit.loader import load_text
from cos.config import Config, Labels, Partitions
from cos.errors import ExitCode


def test_expand_config_is_a_valid_document_that_adds_partitions_then_deploys() -> None:
    cfg = Config(partitions=Partitions(state=4096), labels=Labels(state="MY_STATE"))
    res = load_text(expand_config(cfg, "cos reset --reset-persistent"), EXPAND_CONFIG)
    assert res.errors == [] and len(res.documents) == 1
    steps = res.documents[0].stages["boot"]
    layout, deploy = steps
    guard = f"[ -e /run/cos/recovery_mode ] && [ -e /oem/{EXPAND_CONFIG} ]"
    assert layout["if"] == deploy["if"] == guard
    state, persistent = layout["layout"]["add_partitions"]
    assert (state["fsLabel"], state["pLabel"], state["size"]) == ("MY_STATE", "state", 4096)
    assert (persistent["fsLabel"], persistent["size"]) == ("COS_PERSISTENT", 0)  # the rest
    assert "COS_RECOVERY" in layout["layout"]["device"]["path"]
    # The file goes away only after the deploy succeeded, and before the reboot.
    (cmd,) = deploy["commands"]
    assert cmd == (
        f"cos reset --reset-persistent && rm -f /oem/{EXPAND_CONFIG} && sync && systemctl reboot"
    )


@pytest.mark.root
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--deploy-command", "cos reset"], "--deploy-command only applies to an expandable"),
        (["--expandable", "--deploy-command", " "], "--deploy-command is empty"),
        (
            ["--expandable", "--recovery-system", "oci:/elsewhere:rec"],
            "an expandable disk deploys its system on first boot",
        ),
    ],
)
def test_bad_expandable_options_are_refused_before_writing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("COS_CONFIG_DIR", str(tmp_path / "etc"))
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["build-disk", "oci:/somewhere:v1", "-o", str(out / "disk.raw"), *argv])
    err = capsys.readouterr().err
    assert rc == ExitCode.DISK and message in err and "hint: " in err, err
    assert list(out.iterdir()) == []
