"""cos mount on the host: real loop-backed volumes, tmpfs and overlayfs (no VM).

Each behaviour is checked on both implementations of the boot layout: the Python one
(cos.system.layout, `cos mount`) and the shell one the initrd runs when it can
(/usr/libexec/cos-layout); the shell is held to the Python's results.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.config import Labels, Layout
from cos.data import data_path
from cos.system.layout import apply_layout
from tests.conftest import need

pytestmark = pytest.mark.integration

SHELL_LAYOUT = data_path("libexec", "cos-layout")
HANDOFF = 3  # cos-layout: "this is `cos mount`'s to do"


def shell_layout(
    mode: str, labels: Labels, root: Path, tries: int = 25, **more: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "COS_STAGE_ROOT": str(root), "COS_DEVICE_TRIES": str(tries)}
    env.update(more)
    argv = ["sh", str(SHELL_LAYOUT), mode, labels.oem, labels.persistent, ""]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(params=["python", "shell"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Applied(list[str]):
    """The mount points made, in order, and what the layout logged."""

    log = ""


def layout_of(
    impl: str,
    mode: str,
    labels: Labels,
    root: Path,
    caplog: pytest.LogCaptureFixture | None = None,
    tries: int = 25,
) -> Applied:
    if impl == "python":
        done = Applied(apply_layout(mode, Layout(), labels, root=root, device_timeout=tries / 5))
        done.log = caplog.text if caplog is not None else ""
        return done
    before = set(_mounts_below(root))
    res = shell_layout(mode, labels, root, tries)
    assert res.returncode == 0, res.stderr
    made = [m for m in _mounts_below(root) if m not in before]
    done = Applied(m[len(str(root)) :] for m in made if not m.endswith("/run/cos/overlay"))
    done.log = res.stderr
    return done


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
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("root=LABEL=COS_STATE cos.mode=active\n")
    (root / "run/cos").mkdir()
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


def test_active_layout_persists_only_persistent_paths(
    sysroot: tuple[Path, Labels], impl: str
) -> None:
    root, labels = sysroot
    done = layout_of(impl, "active", labels, root)
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
    layout_of(impl, "active", labels, root)
    assert not (root / "etc/ephemeral").exists()
    assert (root / "etc/hostname").read_text() == "image\n"
    assert (root / "root/kept").is_file() and (root / "var/log/kept.log").is_file()
    assert (root / "oem/kept").is_file()


def test_container_state_paths_are_plain_binds_an_overlay_can_stack_on(
    sysroot: tuple[Path, Labels], impl: str
) -> None:
    root, labels = sysroot
    (root / "var/lib/containers").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/containers/from-image").write_text("seed")
    os.chmod(root / "var/lib/containers", 0o700)
    layout_of(impl, "active", labels, root)
    store = root / "usr/local/.state/var-lib-containers.bind"
    assert (store / "from-image").read_text() == "seed"  # seeded from the image once
    assert (store.stat().st_mode & 0o777) == 0o700  # with the image directory's mode
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
    layout_of(impl, "active", labels, root)
    assert (root / "var/lib/containers/kept").is_file()
    assert (root / "var/lib/containers/from-image").read_text() == "seed"


def test_recovery_layout_never_mounts_persistent(sysroot: tuple[Path, Labels], impl: str) -> None:
    root, labels = sysroot
    done = layout_of(impl, "recovery", labels, root)
    assert "/usr/local" not in done and "/root" not in done
    assert "/oem" in done and "/etc" in done
    assert not any(m.endswith("/usr/local") for m in _mounts_below(root))


def test_missing_persistent_volume_is_a_warning(
    sysroot: tuple[Path, Labels], caplog: pytest.LogCaptureFixture, impl: str
) -> None:
    root, labels = sysroot
    missing = Labels(oem=labels.oem, persistent="NO_SUCH_LABEL")
    done = layout_of(impl, "active", missing, root, caplog, tries=3)
    assert "/usr/local" not in done and "/etc" in done
    assert "persistent paths are ephemeral" in done.log


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


def test_the_machine_gets_a_kept_machine_id_and_a_hostname(
    sysroot: tuple[Path, Labels], impl: str
) -> None:
    root, labels = sysroot
    (root / "etc/hostname").unlink()  # the image names no host
    (root / "etc/machine-id").write_text("")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n  ::1 localhost ip6-localhost \n")
    layout_of(impl, "active", labels, root)
    mid = (root / "usr/local/etc/machine-id").read_text()
    assert len(mid) == 33 and mid.endswith("\n") and int(mid, 16) >= 0
    assert (root / "etc/machine-id").read_text() == mid
    name = f"cos-{mid[:6]}"
    assert (root / "etc/hostname").read_text() == f"{name}\n"
    assert (
        root / "etc/hosts"
    ).read_text() == f"127.0.0.1 localhost {name}\n::1 localhost ip6-localhost\n"

    _umount_all(root)  # a reboot keeps the id; a name given since is not overwritten
    assert (root / "etc/machine-id").read_text() == ""
    layout_of(impl, "active", labels, root)
    assert (root / "etc/machine-id").read_text() == mid
    (root / "etc/hostname").write_text("chosen\n")
    _umount_all(root)
    (root / "etc/hostname").write_text("from-the-image\n")
    layout_of(impl, "active", labels, root)
    assert (root / "etc/hostname").read_text() == "from-the-image\n"
    assert (root / "etc/machine-id").read_text() == mid

    _umount_all(root)  # recovery: its own name, and the installed system's id untouched
    layout_of(impl, "recovery", labels, root)
    assert (root / "etc/hostname").read_text() == "recovery\n"
    assert (root / "etc/hosts").read_text().startswith("127.0.0.1 localhost recovery\n")
    assert (root / "etc/machine-id").read_text() == ""


def test_both_layouts_stack_the_same_layers_on_a_stacked_root(
    sysroot: tuple[Path, Labels], impl: str
) -> None:
    """On a root of stacked layers (the root itself a mount), an overlay straight on it
    gets the layers' own directories: a whiteout, a file or an opaque directory in a
    layer hides what lies below."""
    need("getfattr", "setfattr")
    root, labels = sysroot
    layers = root / "run/cos/layers"
    for i in range(4):
        (layers / str(i) / "etc").mkdir(parents=True)
        (layers / str(i) / "var").mkdir(parents=True)
    (layers / "1/srv").mkdir()
    subprocess.run(
        ["setfattr", "-n", "trusted.overlay.opaque", "-v", "y", layers / "1/etc"], check=True
    )
    (layers / "2/var").rmdir()
    subprocess.run(["mknod", layers / "2/var", "c", "0", "0"], check=True)  # a whiteout
    subprocess.run(["mount", "--bind", root, root], check=True)  # the root is a mount
    layout_of(impl, "recovery", labels, root)
    lowers = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] in (f"{root}/etc", f"{root}/var", f"{root}/srv") and " - overlay " in line:
            opts = line.split(" - ")[1].split()[2].split(",")
            lowers[fields[4][len(str(root)) :]] = next(
                o[len("lowerdir=") :] for o in opts if o.startswith("lowerdir=")
            )
    assert lowers == {
        "/etc": f"{layers}/0/etc:{layers}/1/etc",
        "/var": f"{layers}/0/var:{layers}/1/var",
        "/srv": f"{layers}/1/srv",
    }


def test_the_shell_leaves_to_cos_mount_what_it_does_not_do(
    sysroot: tuple[Path, Labels],
) -> None:
    root, labels = sysroot
    # Live media, and a config that changes the layout: nothing mounted at all.
    assert shell_layout("live", labels, root).returncode == HANDOFF
    (root / "etc/cos").mkdir()
    (root / "etc/cos/config.yaml").write_text("layout:\n  ephemeral: [/etc]\n")
    assert shell_layout("active", labels, root).returncode == HANDOFF
    assert _mounts_below(root) == []
    (root / "etc/cos/config.yaml").write_text("max-snaps: 3\n")
    # A cloud-config for an early stage: the volumes and the overlays' tmpfs are mounted
    # (cos mount takes them as they are), nothing else, and no stage is marked as not
    # started.
    (root / "system/oem").mkdir(parents=True)
    (root / "system/oem/10.yaml").write_text("stages:\n  initramfs:\n    - commands: [true]\n")
    assert shell_layout("active", labels, root).returncode == HANDOFF
    assert _mounts_below(root) == [f"{root}/oem", f"{root}/usr/local", f"{root}/run/cos/overlay"]
    assert not list((root / "run/cos").glob("skipped-stages/*"))
    done = apply_layout("active", Layout(), labels, root=root, device_timeout=5)
    assert "/etc" in done and "/oem" not in done


def test_the_shell_marks_what_the_systemd_units_need_not_start(
    sysroot: tuple[Path, Labels],
) -> None:
    """The initrd looks once for every early stage and for a trial: its markers are
    conditions of cos-setup-fs, cos-setup-boot and cos-boot-assessment."""
    root, labels = sysroot
    run = root / "run/cos"

    def boot() -> set[str]:
        _umount_all(root)
        for p in [*run.glob("skipped-stages/*"), run / "no-trial"]:
            p.unlink(missing_ok=True)
        res = shell_layout("active", labels, root)
        assert res.returncode == 0, res.stderr
        return {p.name for p in run.glob("skipped-stages/*")} | (
            {"no-trial"} if (run / "no-trial").exists() else set()
        )

    # No cloud-config and no grubenv: every early stage is marked; a missing grubenv
    # is a doubt, and the assessment starts.
    assert boot() == {"rootfs", "initramfs", "fs", "boot"}
    header = "# GRUB Environment Block\n"
    (root / "oem/grubenv").write_text(header + "next_entry=\n" + "#" * 990)
    assert boot() == {"rootfs", "initramfs", "fs", "boot", "no-trial"}
    (root / "oem/grubenv").write_text(header + "cos_trial=2\n" + "#" * 992)
    (root / "system/oem").mkdir(parents=True)
    (root / "system/oem/20.yaml").write_text("stages:\n  boot:\n    - commands: [true]\n")
    # A document for the boot stage: the units decide for themselves (their
    # ExecCondition), the initrd's own stages are still marked.
    assert boot() == {"rootfs", "initramfs"}


@pytest.mark.parametrize("link", ["home", "etc/hostname", "usr/local/etc"])
def test_under_a_root_prefix_a_symlink_is_not_followed_out_of_the_root(
    sysroot: tuple[Path, Labels], tmp_path: Path, link: str
) -> None:
    """The initrd runs cos-layout on $NEWROOT: an absolute symlink in the image would
    resolve against the initrd's tree. A layout path or identity file that is one is
    left to `cos mount` (chrooted) with nothing mounted; the kept machine-id's directory
    on the persistent volume (the machine's data) is not written through one."""
    root, labels = sysroot
    outside = tmp_path / "outside"
    outside.mkdir()
    if link == "usr/local/etc":
        res = shell_layout("active", labels, root)  # the volume is mounted now
        assert res.returncode == 0, res.stderr
        (root / "usr/local/etc/machine-id").unlink()
        (root / "usr/local/etc").rmdir()
        (root / link).symlink_to(outside)
        _umount_all(root)
        res = shell_layout("active", labels, root)
        assert res.returncode == 0, res.stderr
        assert "the machine-id is not kept" in res.stderr
        assert list(outside.iterdir()) == []
        assert len((root / "etc/machine-id").read_text().strip()) == 32
        return
    target = root / link
    if target.is_dir():
        target.rmdir()
    else:
        target.unlink()
    target.symlink_to(outside)
    assert shell_layout("active", labels, root).returncode == HANDOFF
    assert _mounts_below(root) == []
    assert list(outside.iterdir()) == []


def test_the_shell_finds_the_volumes_in_udevs_database(
    sysroot: tuple[Path, Labels], tmp_path: Path
) -> None:
    """At boot the labels come from udev's database (what its blkid probe recorded),
    with no process start; a label the database shows twice on disks it cannot tell
    apart is not mounted, although blkid would find it once. (This host runs no udev:
    the database is written here as udev writes it, for the real loop devices.)"""
    root, labels = sysroot
    db = tmp_path / "udev-data"
    db.mkdir()
    by_label = {}
    for name in Path("/sys/class/block").iterdir():
        if not name.name.startswith("loop") or not (name / "loop/backing_file").exists():
            continue
        backing = (name / "loop/backing_file").read_text().strip()
        if backing.startswith(str(root.parent)):
            by_label[Path(backing).stem] = (name / "dev").read_text().strip()
    oem, pers = by_label["oem"], by_label["pers"]

    def record(dev: str, label: str) -> None:
        text = f"S:disk/by-label/{label}\nE:ID_FS_TYPE=ext4\nE:ID_FS_LABEL={label}\n"
        (db / f"b{dev}").write_text(text)

    record(oem, labels.oem)
    record(pers, labels.oem)  # both show as the OEM volume, neither on a known disk
    res = shell_layout("recovery", labels, root, tries=2, COS_UDEV_DATA=str(db))
    assert res.returncode == 0, res.stderr
    assert f"label {labels.oem} is on several devices" in res.stderr
    assert f"{root}/oem" not in _mounts_below(root)
    _umount_all(root)
    record(pers, labels.persistent)
    res = shell_layout("active", labels, root, tries=2, COS_UDEV_DATA=str(db))
    assert res.returncode == 0, res.stderr
    assert {f"{root}/oem", f"{root}/usr/local"} <= set(_mounts_below(root))
