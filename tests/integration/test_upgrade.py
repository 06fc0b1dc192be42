"""cos upgrade / rollback / boot-assessment against a loop-backed disk file (no VM).

The disk is built by build-disk from a real registry; its state and OEM partitions are
mounted here the way the initrd mounts them on a device, and /run/cos facts are
written as the initrd would (active mode, booted image).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cos.boot import grubenv
from tests.support import events
from tests.support.device import (
    Device,
    booted_copy,
    cos_env,
    kill_upgrades,
    mount_partition,
    partition,
)
from tests.support.images import LAYOUT, derive, push
from tests.support.signing import key_pair, sign

V2_FILES = {"/etc/cos-upgrade-test": "v2\n"}


@dataclass
class Images:
    v1: str
    v2: str
    noboot: str
    registry: str


# These scenarios hold for every backend; they run on loop snapshots, whose images
# fsck and debugfs read directly (test_layers.py runs the layers backend's own).
LOOP = "snapshotter: loop\n"


@pytest.fixture(scope="module")
def images(vanilla: str, local_registry: str) -> Images:
    derive("vanilla", "upgrade-v2", V2_FILES)
    derive(
        "vanilla", "upgrade-noboot", {"/etc/cos-upgrade-test": "noboot\n"}, ("/etc/cos/grub.cfg",)
    )
    return Images(
        v1=push("vanilla", local_registry, "cos/upgrade:v1"),
        v2=push("upgrade-v2", local_registry, "cos/upgrade:v2"),
        noboot=push("upgrade-noboot", local_registry, "cos/upgrade:noboot"),
        registry=local_registry,
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Path:
    out = tmp_path_factory.mktemp("upgrade-disk")
    conf = out / "etc-cos"
    conf.mkdir()
    (conf / "config.yaml").write_text(LOOP)
    disk = out / "disk.raw"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cos",
            "build-disk",
            images.v1,
            "-o",
            str(disk),
            "--tls-verify=false",
        ],
        check=True,
        env=cos_env(conf),
    )
    return disk


@pytest.fixture
def device(pristine: Path, tmp_path: Path) -> Iterator[Device]:
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    (conf / "config.yaml").write_text(LOOP)
    with booted_copy(pristine, tmp_path, conf) as dev:
        yield dev
        _release(dev)


def _release(dev: Device) -> None:
    """What a power cut does to mounts: drop whatever an interrupted upgrade left mounted."""
    tree = dev.run / "upgrade/tree"
    for _ in range(4):
        mounts = Path("/proc/self/mountinfo").read_text()
        if f" {tree} " not in mounts and f" {tree}/" not in mounts:
            break
        subprocess.run(["umount", "-R", "-d", str(tree)], check=False, capture_output=True)


def _fsck_clean(image: Path) -> None:
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)


def _cat(image: Path, path: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True
    ).stdout


def _blob_gets(images: Images, log: Path) -> set[str]:
    text = log.read_text()
    return set(re.findall(r"GET /v2/cos/upgrade/blobs/(sha256:[0-9a-f]{64})", text))


def _layers(tag: str) -> list[str]:
    out = subprocess.run(
        ["skopeo", "inspect", f"oci:{LAYOUT}:{tag}"], capture_output=True, text=True, check=True
    ).stdout
    return list(json.loads(out)["Layers"])


def test_upgrade_rollback_and_prune(device: Device, images: Images, registry_dir: Path) -> None:
    log = registry_dir / "registry.log"
    before = _blob_gets(images, log)
    r = device.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--json")
    assert "Switching to snapshot 2" in r.stderr
    evs = events.parse(r.stdout)

    # Only the added layer travelled: the store was seeded with v1's blobs at build-disk.
    new_layers = set(_layers("upgrade-v2")) - set(_layers("vanilla"))
    fetched = _blob_gets(images, log) - before
    assert new_layers and new_layers <= fetched
    assert not (fetched & set(_layers("vanilla")))

    # Switched: active link, complete and clean image with v2's content, state and trial.
    assert device.active() == 2
    img = device.state / ".snapshots/2/snapshot.img"
    _fsck_clean(img)
    assert _cat(img, "/etc/cos-upgrade-test") == "v2\n"
    env = device.env()
    assert (env["cos_trial"], env["cos_tries"], env["cos_fallback"], env["passive_snaps"]) == (
        "2",
        "3",
        "1",
        "1",
    )
    st = device.status()
    snaps = {s["number"]: s for s in st["snapshots"]}
    assert snaps[2]["active"] and not snaps[1]["active"]
    assert snaps[2]["source"] == images.v2 and snaps[2]["from_action"] == "upgrade"
    assert snaps[2]["boot_assessment"] == "trial"
    assert st["trial"] == {"snapshot": 2, "tries_left": 3, "fallback": 1}
    digest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{images.v2}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["Digest"]
    assert snaps[2]["digest"] == digest
    # --json: the new layers' bytes were reported up to their sizes; the result names
    # the snapshot that boots next.
    pulled = events.check_pulled(evs)
    assert new_layers <= set(pulled) and not set(pulled) & set(_layers("vanilla"))
    assert "Building snapshot 2" in [e["step"] for e in events.of(evs, "step-end") if e["ok"]]
    res = events.result(evs)
    assert (res["ok"], res["exit_code"], res["snapshot"], res["changed"]) == (True, 0, 2, True)
    assert (res["digest"], res["image"]) == (digest, images.v2)
    assert not list((device.state / ".snapshots").glob("*/.partial"))

    # The same digest again: nothing to do, nothing changed.
    r = device.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--json")
    assert "Already up to date" in r.stderr
    res = events.result(events.parse(r.stdout))
    assert (res["ok"], res["snapshot"], res["changed"]) == (True, 2, False)
    assert sorted(p.name for p in (device.state / ".snapshots").iterdir()) == ["1", "2", "active"]

    # Boot 2 and confirm it: the trial ends, state records it.
    device.boot("active", 2)
    assert device.cos("boot-assessment", "--mark-good").stdout.strip() == "good"
    assert "cos_trial" not in device.env()
    # What cos-mark-good.service runs at every boot: the assessment, then the status.
    shown = device.cos("boot-assessment", "--mark-good", "--status").stdout
    assert "Snapshots:" in shown and shown.split()[0] != "none", shown
    assert {s["number"]: s for s in device.status()["snapshots"]}[2]["boot_assessment"] == "good"

    # Roll back: 1 is active again; 2 stays in the menu.
    device.cos("rollback")
    assert device.active() == 1
    assert device.env()["passive_snaps"] == "2"
    device.boot("active", 1)

    # Downgrade-style upgrade from 1 to v1 with max-snaps 2: 3 is made, 2 pruned with its blobs.
    device.cos("upgrade", "--system", images.v1, "--tls-verify=false", "--force")
    assert device.active() == 3
    assert sorted(p.name for p in (device.state / ".snapshots").iterdir()) == ["1", "3", "active"]
    stored = {p.name for p in (device.state / ".store/blobs/sha256").iterdir()}
    assert not {d.split(":")[1] for d in new_layers} & stored
    assert set(json.loads((device.state / ".store/index.json").read_text())["manifests"][0]) >= {
        "digest"
    }
    assert (
        sorted(device.status()["snapshots"], key=lambda s: s["number"])[-1]["source"] == images.v1
    )

    history = yaml.safe_load((device.state / "state.yaml").read_text())["history"]
    assert [(h["action"], h.get("snapshot")) for h in history] == [
        ("build-disk", 1),
        ("upgrade", 2),
        ("rollback", 1),
        ("upgrade", 3),
    ]

    # One-shot rollback: only next_entry changes.
    device.cos("rollback", "1", "--once")
    assert device.env()["next_entry"] == "passive1"
    assert device.active() == 3


def test_fallback_is_recorded_and_rolled_back(device: Device, images: Images) -> None:
    device.cos("upgrade", "--system", images.v2, "--tls-verify=false")
    # GRUB used up the tries and booted the fallback (passive 1).
    grubenv.update(device.oem / "grubenv", {"cos_tries": "0"})
    device.boot("passive", 1)
    assert device.cos("boot-assessment").stdout.strip() == "fallback"
    failure = json.loads((device.run / "upgrade_failure").read_text())
    assert failure["snapshot"] == 2 and failure["booted"] == 1
    assert device.active() == 1
    env = device.env()
    assert "cos_trial" not in env and env["passive_snaps"] == "2"
    st = device.status()
    assert st["upgrade_failure"]["snapshot"] == 2
    assert {s["number"]: s for s in st["snapshots"]}[2]["boot_assessment"] == "failed"
    assert st["history"][-1]["action"] == "fallback from 2" and st["history"][-1]["snapshot"] == 1
    assert st["history"][-2]["action"] == "boot-failed" and st["history"][-2]["snapshot"] == 2
    # The image that failed is not installed again by a plain upgrade (an automated
    # upgrader would loop: install, fail, fall back, install…); --force retries it.
    device.boot("active", 1)
    TestRefusals().refused(
        device, 7, "failed its trial boot", "upgrade", "--system", images.v2, "--tls-verify=false"
    )
    # A later good upgrade starts clean: fresh counters, fallback is the running one.
    device.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--force")
    env = device.env()
    assert (env["cos_trial"], env["cos_tries"], env["cos_fallback"]) == ("3", "3", "1")


class TestRefusals:
    """Each refusal: one error line + hint, its exit code, and nothing changed."""

    @staticmethod
    def snapshot_of(dev: Device) -> tuple[object, ...]:
        snaps = sorted(str(p.relative_to(dev.state)) for p in (dev.state / ".snapshots").rglob("*"))
        return (
            snaps,
            os.readlink(dev.state / ".snapshots/active"),
            (dev.state / "state.yaml").read_text(),
            (dev.oem / "grubenv").read_bytes(),
            json.loads((dev.state / ".store/index.json").read_text()),
            sorted(p.name for p in (dev.state / ".store/blobs/sha256").iterdir()),
        )

    def refused(
        self, dev: Device, code: int, words: str, *args: str
    ) -> subprocess.CompletedProcess[str]:
        before = self.snapshot_of(dev)
        r = dev.cos(*args, check=False)
        assert r.returncode == code, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines[-2].startswith("cos: error:") and words in lines[-2], r.stderr
        assert lines[-1].startswith("hint:")
        assert "Traceback" not in r.stderr
        assert self.snapshot_of(dev) == before
        return r

    def test_image_not_prepared_by_cos_init(self, device: Device, images: Images) -> None:
        self.refused(
            device,
            4,
            "not prepared by cos init",
            "upgrade",
            "--system",
            images.noboot,
            "--tls-verify=false",
        )

    def test_state_partition_too_small(self, device: Device, images: Images) -> None:
        st = os.statvfs(device.state)
        filler = device.state / "filler"
        subprocess.run(
            ["fallocate", "-l", str(st.f_bavail * st.f_frsize - 300 * 1024 * 1024), str(filler)],
            check=True,
        )
        try:
            self.refused(
                device, 5, "missing", "upgrade", "--system", images.v2, "--tls-verify=false"
            )
        finally:
            filler.unlink()

    def test_not_in_recovery(self, device: Device, images: Images) -> None:
        device.boot("recovery", None)
        self.refused(
            device, 7, "recovery mode", "upgrade", "--system", images.v2, "--tls-verify=false"
        )

    def test_unreachable_registry(self, device: Device) -> None:
        self.refused(
            device,
            4,
            "cannot read image",
            "upgrade",
            "--system",
            "127.0.0.1:9/cos/x:1",
            "--tls-verify=false",
        )

    def test_rollback_to_a_missing_snapshot(self, device: Device) -> None:
        self.refused(device, 7, "does not exist", "rollback", "7")

    def test_a_damaged_grubenv_is_refused_before_anything_is_built(
        self, device: Device, images: Images
    ) -> None:
        env = device.oem / "grubenv"
        env.write_bytes(b"garbage" + env.read_bytes()[7:])
        self.refused(
            device, 3, "not a GRUB environment block", "upgrade", "--system", images.v2,
            "--tls-verify=false",
        )  # fmt: skip


def test_a_damaged_blob_in_the_store_is_fetched_again(
    device: Device, images: Images, registry_dir: Path
) -> None:
    shared = [d for d in _layers("upgrade-v2") if d in set(_layers("vanilla"))]
    damaged = min(
        shared, key=lambda d: (device.state / ".store/blobs/sha256" / d[7:]).stat().st_size
    )
    blob = device.state / ".store/blobs/sha256" / damaged[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    log = registry_dir / "registry.log"
    gets = f"GET /v2/cos/upgrade/blobs/{damaged}"
    before = log.read_text().count(gets)
    r = device.cos("upgrade", "--system", images.v2, "--tls-verify=false")
    assert "is damaged" in r.stderr and "fetched again" in r.stderr
    assert log.read_text().count(gets) > before  # this blob travelled again
    assert device.active() == 2
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == damaged


# An upgrade whose switch fails at the rename of the `active` link.
_FAILING_SWITCH = """
import sys
from cos.snapshot.loop import LoopSnapshotter
def fail(self, n):
    raise OSError(5, "the switch failed")
LoopSnapshotter._link = fail
from cos.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_switch_that_fails_takes_its_snapshot_out(device: Device, images: Images) -> None:
    before = TestRefusals.snapshot_of(device)
    listed = [s["number"] for s in device.status()["snapshots"]]
    r = subprocess.run(
        [sys.executable, "-c", _FAILING_SWITCH, "upgrade", "--system", images.v2,
         "--tls-verify=false", *device.flags()],
        env=cos_env(device.conf), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode != 0 and "the switch failed" in r.stderr
    after = TestRefusals.snapshot_of(device)
    # The built snapshot, its state.yaml entry, the trial and its blobs are gone again.
    assert after[0] == before[0] and after[1] == before[1]
    assert [s["number"] for s in device.status()["snapshots"]] == listed
    assert "cos_trial" not in device.env()
    assert after[4] == before[4] and after[5] == before[5]
    # Nothing is left for a rollback to make active without a trial.
    r = device.cos("rollback", check=False)
    assert r.returncode == 7 and "no other snapshot" in r.stderr


# Loop snapshots, no longer the default: the CI run keeps the same 20 kills on the default
# backend (test_layers.py); this one for `snapshotter: loop` runs in `make test-extended`.
@pytest.mark.extended
def test_killed_at_random_points_always_leaves_a_bootable_selection(
    device: Device, images: Images
) -> None:
    """SIGKILL the upgrade (and its children) at ≥ 20 random instants: every time the
    active link names a complete, fsck-clean image, the boot env and state.yaml parse,
    and a later upgrade succeeds."""

    def check(i: int) -> None:
        active = device.active()
        img = device.state / f".snapshots/{active}/snapshot.img"
        assert img.is_file() and not (img.parent / ".partial").exists(), f"round {i}: {active}"
        _fsck_clean(img)
        # Every snapshot the menu offers is complete (a crash may list the active one
        # twice, never a missing one).
        for n in device.env().get("passive_snaps", "").split():
            assert (device.state / f".snapshots/{n}/snapshot.img").is_file(), f"round {i}: {n}"
            assert not (device.state / f".snapshots/{n}/.partial").exists(), f"round {i}: {n}"

    kill_upgrades(device, [images.v1, images.v2], check, _release, seed=20261123)
    # And the device still upgrades; debris of the interrupted runs is gone.
    device.boot("active", device.active())
    device.cos("upgrade", "--system", images.v2, "--tls-verify=false", "--force")
    assert not list((device.state / ".snapshots").glob("*/.partial"))
    nums = [p.name for p in (device.state / ".snapshots").iterdir() if p.name.isdigit()]
    assert len(nums) == 2
    shutil.rmtree(device.run / "upgrade", ignore_errors=True)


def test_upgrade_recovery_switches_generations(
    device: Device, images: Images, tmp_path: Path
) -> None:
    with mount_partition(device.disk, "recovery", tmp_path / "rec") as rec:
        assert os.readlink(rec / "boot") == "boot.1"
        r = device.cos(
            "upgrade-recovery",
            "--recovery-system",
            images.v2,
            "--tls-verify=false",
            "--recovery-dir",
            str(rec),
            "--json",
        )
        assert "Recovery system replaced" in r.stderr
        res = events.result(events.parse(r.stdout))
        assert (res["ok"], res["image"], res["changed"]) == (True, images.v2, True)
        assert os.readlink(rec / "boot") == "boot.2" and not (rec / "boot.1").exists()
        assert {p.name for p in (rec / "boot").iterdir()} >= {"recovery.img", "vmlinuz", "initrd"}
        content = subprocess.run(
            ["unsquashfs", "-cat", str(rec / "boot/recovery.img"), "etc/cos-upgrade-test"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert content == "v2\n"
        for where in (rec, device.state):
            st = yaml.safe_load((where / "state.yaml").read_text())
            assert st["recovery"]["source"] == images.v2
            assert st["recovery"]["from-action"] == "upgrade-recovery"
        assert set(json.loads(device.cos("status", "--json").stdout)["recovery"]) >= {"source"}
        tags = [
            m["annotations"]["org.opencontainers.image.ref.name"]
            for m in json.loads((device.state / ".store/index.json").read_text())["manifests"]
        ]
        assert tags == ["snapshot-1"] and not (device.state / ".scratch").exists()
        # Same digest again: nothing to do; the active system was never touched.
        r = device.cos("upgrade-recovery", "--tls-verify=false", "--recovery-dir", str(rec))
        assert "up to date" in r.stderr
        assert device.active() == 1


def _esp(device: Device, *argv: str) -> str:
    offset, _ = partition("efi")
    return subprocess.run(
        [*argv[:1], "-i", f"{device.disk}@@{offset}", *argv[1:]],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout


def test_upgrade_with_bootloader_rewrites_grub(device: Device, images: Images) -> None:
    def serial() -> str:
        return re.search(r"serial number: (\w+)", _esp(device, "minfo", "::"))[1]  # type: ignore[index]

    before = serial()
    with open(device.disk, "rb") as f:
        mbr_before = f.read(512)
    device.cos(
        "upgrade",
        "--system",
        images.v2,
        "--tls-verify=false",
        "--bootloader",
        "--disk",
        str(device.disk),
    )
    after = serial()
    assert after != before  # a new ESP filesystem …
    efi = subprocess.run(
        ["mtype", "-i", f"{device.disk}@@{partition('efi')[0]}", "::/EFI/BOOT/BOOTX64.EFI"],
        capture_output=True,
        check=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout
    # … whose GRUB looks for exactly that filesystem.
    assert f"{after[:4]}-{after[4:]}".encode() in efi
    assert "menuentry" in _esp(device, "mtype", "::/grub/grub.cfg")
    with open(device.disk, "rb") as f:
        mbr = f.read(512)
    assert mbr[0x1B8:] == mbr_before[0x1B8:] and mbr[510:] == b"\x55\xaa"
    assert device.active() == 2


def test_upgrade_verifies_the_signature_when_configured(
    device: Device, images: Images, tmp_path: Path
) -> None:
    key_file, pub = key_pair(tmp_path)
    (device.conf / "config.yaml").write_text(f"{LOOP}verify: true\ncosign-key: {pub}\n")
    ref = push("upgrade-v2", images.registry, "cos/signed:v2")

    r = TestRefusals().refused(
        device, 4, "not signed", "upgrade", "--system", ref, "--tls-verify=false", "--json"
    )
    events.check_failed(r.stdout, 4, "not signed")

    sign(ref, key_file, cos_env(device.conf))
    r = device.cos("upgrade", "--system", ref, "--tls-verify=false")
    assert "Signature of" in r.stderr and "verified" in r.stderr
    assert device.active() == 2
    assert _cat(device.state / ".snapshots/2/snapshot.img", "/etc/cos-upgrade-test") == "v2\n"


# An `upgrade --apply` cut by a power loss right before the rename of the `active` link
# (grubenv and state.yaml written): SIGKILL, so no handler runs.
_CUT_SWITCH = """
import os, signal, sys
from cos.snapshot.loop import LoopSnapshotter
LoopSnapshotter._link = lambda self, n: os.kill(os.getpid(), signal.SIGKILL)
from cos.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_staged_upgrade_in_a_maintenance_window(
    device: Device, images: Images, registry_dir: Path
) -> None:
    """check → download-only (cut once at a random instant) → status → apply (cut before
    the switch, refused for a moved tag, then done)."""
    ref = push("upgrade-v2", images.registry, "cos/upgrade:window")  # blobs there already
    flags = ("--system", ref, "--tls-verify=false")
    log = registry_dir / "registry.log"

    # --check: the manifest only; exit 9 without an update, 0 with one.
    before, gets = TestRefusals.snapshot_of(device), _blob_gets(images, log)
    r = device.cos("upgrade", "--check", "--system", images.v1, "--tls-verify=false", "--json",
                   check=False)  # fmt: skip
    assert r.returncode == 9 and "Up to date" in r.stderr
    assert events.result(events.parse(r.stdout))["available"] is False
    r = device.cos("upgrade", "--check", *flags, "--json")
    res = events.result(events.parse(r.stdout))
    assert (res["available"], res["staged"], res["exit_code"]) == (True, False, 0)
    assert TestRefusals.snapshot_of(device) == before and _blob_gets(images, log) == gets

    # --download-only cut at a random instant: no staged snapshot, or a complete one.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cos", "upgrade", "--download-only", *flags, *device.flags()],
        env=cos_env(device.conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    delay = random.Random().uniform(0.5, 15.0)  # a download takes 15-20 s here
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _release(device)
    st = device.status()
    staged = st["staged"]
    if staged is not None:
        _fsck_clean(device.state / f".snapshots/{staged['snapshot']}/snapshot.img")
    assert device.active() == 1 and "cos_trial" not in device.env(), f"cut at {delay:.1f} s"
    assert [s["number"] for s in st["snapshots"]] == [1], f"cut at {delay:.1f} s"

    # --download-only: built, staged, in no menu; it survives a reboot.
    r = device.cos("upgrade", "--download-only", *flags, "--json")
    res = events.result(events.parse(r.stdout))
    n = res["snapshot"]
    assert (res["staged"], res["changed"]) == (True, staged is None)
    img = device.state / f".snapshots/{n}/snapshot.img"
    _fsck_clean(img)
    assert _cat(img, "/etc/cos-upgrade-test") == "v2\n"
    assert device.active() == 1 and not device.env().get("passive_snaps")
    device.boot("active", 1)
    assert device.cos("boot-assessment").stdout.strip() == "none"
    st = device.status()
    assert (st["staged"]["snapshot"], st["staged"]["source"]) == (n, ref)
    assert st["staged"]["digest"] == res["digest"] and [s["number"] for s in st["snapshots"]] == [1]
    assert "Staged:    snapshot" in device.cos("status").stdout
    assert "no other snapshot" in device.cos("rollback", check=False).stderr
    r = device.cos("upgrade", "--check", *flags, "--json")
    assert events.result(events.parse(r.stdout))["staged"] is True

    # --apply cut before the link: the old snapshot boots, the new one is still staged.
    r = subprocess.run(
        [sys.executable, "-c", _CUT_SWITCH, "upgrade", "--apply", "--tls-verify=false",
         *device.flags()],
        env=cos_env(device.conf), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert device.active() == 1 and device.env()["cos_trial"] == str(n)
    st = device.status()
    assert st["staged"]["snapshot"] == n and [s["number"] for s in st["snapshots"]] == [1]
    assert device.cos("boot-assessment").stdout.strip() == "none"  # the next boot
    assert "cos_trial" not in device.env() and not device.env().get("passive_snaps")

    # The tag moved since: refused, nothing changed; back to the staged digest: applied.
    push("vanilla", images.registry, "cos/upgrade:window")
    TestRefusals().refused(device, 7, "was staged from", "upgrade", "--apply", "--tls-verify=false")
    push("upgrade-v2", images.registry, "cos/upgrade:window")
    r = device.cos("upgrade", "--apply", "--tls-verify=false", "--json")
    res = events.result(events.parse(r.stdout))
    assert (res["snapshot"], res["changed"], res["image"]) == (n, True, ref)
    assert device.active() == n and device.env()["passive_snaps"] == "1"
    st = device.status()
    assert st["staged"] is None and [s["number"] for s in st["snapshots"] if s["active"]] == [n]
    assert st["trial"] == {"snapshot": n, "tries_left": 3, "fallback": 1}
    assert st["history"][-1]["action"] == "upgrade" and st["history"][-1]["snapshot"] == n
    r = device.cos("upgrade", "--apply", "--offline", check=False)
    assert r.returncode == 7 and "no snapshot is staged" in r.stderr
