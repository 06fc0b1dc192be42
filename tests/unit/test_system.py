from __future__ import annotations

from pathlib import Path

import pytest

from cos.errors import StateError
from cos.system import features
from cos.system.kernel import find_kernels
from cos.system.layout import overlay_name
from cos.system.release import parse_os_release, read_os_release
from cos.system.state import (
    Assessment,
    ImageState,
    InstallState,
    SnapshotterKind,
    SnapshotterState,
    read_state,
    write_state,
)


def test_overlay_names() -> None:
    assert overlay_name("/var/log") == "var-log.overlay"
    assert overlay_name("/etc") == "etc.overlay"


def test_os_release_parsing(tmp_path: Path) -> None:
    text = 'NAME="Debian GNU/Linux"\n# c\nIMAGE_REPO=cos/vanilla\nIMAGE="cos/vanilla:v1"\nBAD\n'
    assert parse_os_release(text) == {
        "NAME": "Debian GNU/Linux",
        "IMAGE_REPO": "cos/vanilla",
        "IMAGE": "cos/vanilla:v1",
    }
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr/lib/os-release").write_text(text)
    (tmp_path / "etc/os-release").symlink_to("../usr/lib/os-release")
    assert read_os_release(tmp_path)["IMAGE"] == "cos/vanilla:v1"


def test_kernels_newest_first(tmp_path: Path) -> None:
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-1-amd64"):
        (tmp_path / "boot").mkdir(exist_ok=True)
        (tmp_path / f"boot/vmlinuz-{v}").write_text("k")
        (tmp_path / f"usr/lib/modules/{v}").mkdir(parents=True)
    (tmp_path / "boot/vmlinuz-7.0-nomodules").write_text("k")
    assert [k.version for k in find_kernels(tmp_path)] == [
        "6.1.0-10-amd64",
        "6.1.0-9-amd64",
        "5.10.0-1-amd64",
    ]


def test_state_roundtrip(tmp_path: Path) -> None:
    img = ImageState(
        source="oci:x:y",
        digest="sha256:" + "0" * 64,
        label="COS_SNAP1",
        fs="ext4",
        date="2026-01-01T00:00:00Z",
        from_action="build-disk",
        os_release={"IMAGE": "a:b"},
        active=True,
        boot_assessment=Assessment.GOOD,
    )
    st = InstallState(
        date="2026-01-01T00:00:00Z",
        snapshotter=SnapshotterState(max_snaps=2),
        labels={"state": "COS_STATE"},
        snapshots={1: img},
        recovery=img,
    )
    write_state(tmp_path, st)
    text = (tmp_path / "state.yaml").read_text()
    assert "from-action: build-disk" in text and "boot-assessment: good" in text
    assert "type: loop\n" in text
    back = read_state(tmp_path)
    assert back == st and back.active() == 1


def test_state_written_by_older_toolkits_reads(tmp_path: Path) -> None:
    old = (
        "date: d\nsnapshotter: {type: loopdevice, max-snaps: 3}\nlabels: {}\n"
        "snapshots:\n  1: {source: s, digest: d, label: l, fs: ext4, date: d,"
        " from-action: install, active: true, future-key: 1}\n"
        "history:\n- {date: d, action: install, snapshot: 1}\n"
    )
    st = InstallState.from_yaml(old)
    assert st.snapshotter == SnapshotterState(type=SnapshotterKind.LOOP, max_snaps=3)
    assert st.snapshots[1].boot_assessment == Assessment.NONE and st.active() == 1
    assert st.history[0].snapshot == 1 and st.history[0].source is None


@pytest.mark.parametrize(
    "text",
    [
        "snapshotter: {type: btrfs}\n",
        "snapshots: {1: {boot-assessment: maybe}}\n",
        "snapshots: {x: {}}\n",
        "history: [{snapshot: one}]\n",
    ],
)
def test_state_with_values_cos_cannot_act_on_is_refused(text: str) -> None:
    with pytest.raises(StateError, match="not a valid cos state file"):
        InstallState.from_yaml(text)


def test_features_install_into_a_tree(tmp_path: Path) -> None:
    (tmp_path / "usr/share/systemd").mkdir(parents=True)
    (tmp_path / "usr/share/systemd/tmp.mount").write_text("[Mount]\nWhat=tmpfs\n")
    for name in ("immutable-rootfs", "grub-config", "layout", "systemd"):
        features.FEATURES[name].install(tmp_path)
    assert (tmp_path / "usr/lib/dracut/modules.d/90cos/module-setup.sh").stat().st_mode & 0o111
    conf = (tmp_path / "etc/dracut.conf.d/90-cos.conf").read_text()
    assert 'add_dracutmodules+=" cos "' in conf
    assert "menuentry" in (tmp_path / "etc/cos/grub.cfg").read_text()
    assert (tmp_path / "oem").is_dir()
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/cos-mark-good.service"
    assert link.is_symlink() and str(link.readlink()) == "/etc/systemd/system/cos-mark-good.service"
    assert (tmp_path / "etc/systemd/system/local-fs.target.wants/tmp.mount").is_symlink()


def test_completion_feature_installs_the_generated_scripts(tmp_path: Path) -> None:
    from cos.cli import build_parser
    from cos.docgen import completion

    features.FEATURES["completion"].install(tmp_path)
    bash = tmp_path / "usr/share/bash-completion/completions/cos"
    zsh = tmp_path / "usr/share/zsh/vendor-completions/_cos"
    assert bash.read_text() == completion.bash(build_parser())
    assert zsh.read_text() == completion.zsh(build_parser())


def test_a_retired_unit_of_an_earlier_version_is_removed(tmp_path: Path) -> None:
    """cos-status.service printed the status with a Python start of its own; the mark-good
    unit prints it now, so an image initialised again must not run both."""
    units = tmp_path / "etc/systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True)
    (units / "cos-status.service").write_text("[Service]\nExecStart=/usr/bin/cos status\n")
    (units / "multi-user.target.wants/cos-status.service").symlink_to(
        "/etc/systemd/system/cos-status.service"
    )
    features.FEATURES["systemd"].install(tmp_path)
    assert not (units / "cos-status.service").exists()
    assert not (units / "multi-user.target.wants/cos-status.service").is_symlink()
    good = (units / "cos-mark-good.service").read_text()
    assert "--status" in good and "recovery_mode" in good
