"""cos mount on the host: real loop-backed volumes, tmpfs and overlayfs (no VM)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.config import Labels, Layout
from cos.system.layout import apply_layout
from tests.conftest import need

pytestmark = pytest.mark.integration


def _mounts_below(root: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4]
        if mnt == str(root) or mnt.startswith(f"{root}/"):
            out.append(mnt)
    return out


def _umount_all(root: Path) -> None:
    for mnt in sorted(_mounts_below(root), key=len, reverse=True):
        subprocess.run(["umount", mnt], check=True)


@pytest.fixture
def sysroot(tmp_path: Path) -> Iterator[tuple[Path, Labels]]:
    need("mkfs.ext4", "losetup", "blkid", root=True)
    root = tmp_path / "sysroot"
    for d in ("etc/systemd", "var/log", "srv", "root", "home", "opt", "oem", "usr/local", "run"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("image\n")
    tag = secrets.token_hex(3).upper()
    labels = Labels(oem=f"T{tag}_OEM", persistent=f"T{tag}_PER")
    loops = []
    for name, label in (("oem", labels.oem), ("pers", labels.persistent)):
        img = tmp_path / f"{name}.img"
        subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-L", label, str(img)], check=True)
        loops.append(
            subprocess.run(
                ["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True
            ).stdout.strip()
        )
    try:
        yield root, labels
    finally:
        _umount_all(root)
        for loop in loops:
            subprocess.run(["losetup", "-d", loop], check=False)


def test_active_layout_persists_only_persistent_paths(sysroot: tuple[Path, Labels]) -> None:
    root, labels = sysroot
    layout = Layout()
    done = apply_layout("active", layout, labels, root=root, device_timeout=5)
    assert done[:2] == ["/oem", "/usr/local"]
    assert done[2:5] == ["/etc", "/srv", "/var"]  # ephemeral, sorted by depth
    assert set(done[5:]) == {"/etc/ssh", "/etc/systemd", "/home", "/opt", "/root", "/var/log"} | {
        "/var/lib/containerd", "/var/lib/containers", "/var/lib/rancher", "/var/lib/kubelet",
        "/var/lib/longhorn", "/var/lib/cni",
    }  # fmt: skip
    assert done.index("/etc/ssh") > done.index("/home")  # deeper paths after shallower ones
    assert done.index("/var/lib/kubelet") > done.index("/var")

    (root / "etc/ephemeral").write_text("x")
    (root / "root/kept").write_text("x")
    (root / "var/log/kept.log").write_text("x")
    (root / "oem/kept").write_text("x")
    (root / "etc/hostname").write_text("changed\n")
    assert (root / "usr/local/.state/root.overlay/upper/kept").is_file()

    _umount_all(root)  # a reboot
    assert not (root / "etc/ephemeral").exists()  # nothing leaked into the image tree
    apply_layout("active", layout, labels, root=root, device_timeout=5)
    assert not (root / "etc/ephemeral").exists()
    assert (root / "etc/hostname").read_text() == "image\n"
    assert (root / "root/kept").is_file() and (root / "var/log/kept.log").is_file()
    assert (root / "oem/kept").is_file()


def test_container_state_paths_are_plain_binds_an_overlay_can_stack_on(
    sysroot: tuple[Path, Labels],
) -> None:
    root, labels = sysroot
    (root / "var/lib/containers").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/containers/from-image").write_text("seed")
    layout = Layout(persistent_bind=["/var/lib/containers"])
    apply_layout("active", layout, labels, root=root, device_timeout=5)
    store = root / "usr/local/.state/var-lib-containers.bind"
    assert (store / "from-image").read_text() == "seed"  # seeded from the image once
    line = next(
        ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
        if f" {root}/var/lib/containers " in ln
    )  # fmt: skip
    assert " - overlay " not in line  # a bind of an ext4 directory, not an overlay
    # What a container runtime does there: an overlay with upper and work on the path.
    base = root / "var/lib/containers/o"
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir(parents=True)
    (base / "lower/f").write_text("lower")
    opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "merged")], check=True
    )
    try:
        (base / "merged/f").write_text("changed")
        assert (base / "upper/f").read_text() == "changed"
    finally:
        subprocess.run(["umount", str(base / "merged")], check=True)
    (root / "var/lib/containers/kept").write_text("x")
    _umount_all(root)  # a reboot: the bind dir is not seeded again, and what was written stays
    apply_layout("active", layout, labels, root=root, device_timeout=5)
    assert (root / "var/lib/containers/kept").is_file()
    assert (root / "var/lib/containers/from-image").read_text() == "seed"


def test_recovery_layout_never_mounts_persistent(sysroot: tuple[Path, Labels]) -> None:
    root, labels = sysroot
    done = apply_layout("recovery", Layout(), labels, root=root, device_timeout=5)
    assert "/usr/local" not in done and "/root" not in done
    assert "/oem" in done and "/etc" in done
    assert not any(m.endswith("/usr/local") for m in _mounts_below(root))


def test_missing_persistent_volume_is_a_warning(
    sysroot: tuple[Path, Labels], caplog: pytest.LogCaptureFixture
) -> None:
    root, labels = sysroot
    missing = Labels(oem=labels.oem, persistent="NO_SUCH_LABEL")
    done = apply_layout("active", Layout(), missing, root=root, device_timeout=0.5)
    assert "/usr/local" not in done and "/etc" in done
    assert "persistent paths are ephemeral" in caplog.text


def test_live_layout_touches_no_volume_and_keeps_everything_in_ram(
    sysroot: tuple[Path, Labels],
) -> None:
    root, labels = sysroot  # the OEM and persistent volumes exist, and must stay untouched
    done = apply_layout("live", Layout(), labels, root=root, device_timeout=5)
    assert "/oem" not in done
    for path in ("/etc", "/var", "/home", "/root", "/var/log", "/usr/local"):
        assert path in done, path
    assert not any(m.endswith(("/oem", "/usr/local/.state")) for m in _mounts_below(root))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if f" {root}/" in line:
            assert " - overlay " in line or " - tmpfs " in line, line
    (root / "usr/local/scratch").write_text("x")
    _umount_all(root)
    assert not (root / "usr/local/scratch").exists()
