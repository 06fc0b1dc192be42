"""The installed system as the running OS sees it: what booted, where its parts are.

The initrd leaves the facts in /run/cos: the mode sentinel, the image it booted
(resolved, `.snapshots/N/snapshot.img`), and COS_STATE mounted read-only at
/run/cos/state. COS_OEM is mounted at /oem by the layout. Actions take these paths
from here, so they can also act on a device mounted elsewhere (maintenance, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cos.disk.mounts import find_device, mount_source
from cos.errors import StateError
from cos.system.state import InstallState, read_state

RUN_DIR = Path("/run/cos")
FAILURE_FILE = "upgrade_failure"


class Mode(StrEnum):
    """What a boot runs; the initrd leaves /run/cos/<mode>_mode (cloud-configs test it)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    RECOVERY = "recovery"
    LIVE = "live"


INSTALLED_MODES = (Mode.ACTIVE, Mode.PASSIVE)  # booted from a snapshot


@dataclass(frozen=True)
class Installed:
    state_dir: Path  # COS_STATE mount
    oem_dir: Path  # COS_OEM mount (grubenv)
    run_dir: Path = RUN_DIR
    recovery_dir: Path | None = None  # COS_RECOVERY mounted read-write (else found by label)
    disk: Path | None = None  # the disk holding the installation (else found from the ESP)

    @classmethod
    def running(cls, oem_mount: str = "/oem") -> Installed:
        return cls(RUN_DIR / "state", Path(oem_mount), RUN_DIR)

    # -- what booted ------------------------------------------------------------
    def mode(self) -> Mode | None:
        for mode in Mode:
            if (self.run_dir / f"{mode}_mode").exists():
                return mode
        return None

    def booted_image(self) -> str | None:
        p = self.run_dir / "image"
        return p.read_text().strip() if p.exists() else None

    def booted_snapshot(self) -> int | None:
        """Number of the snapshot this boot runs (None in recovery, live or unknown)."""
        image = self.booted_image()
        if self.mode() not in INSTALLED_MODES or not image:
            return None
        # .snapshots/N/snapshot.img (a loop image) or .snapshots/N (a stack of layers)
        parts = Path(image).parts
        for part in parts[-2:][::-1]:
            if part.isascii() and part.isdecimal():
                return int(part)
        return None

    # -- what is installed ------------------------------------------------------
    def state(self) -> InstallState:
        state = read_state(self.state_dir)
        if state is None:
            raise StateError(
                f"no state.yaml in {self.state_dir}: this is not an installed cos system",
                hint="install first (cos install) or boot the installed system",
            )
        return state

    def boot_disk(self, efi_label: str) -> Path:
        """The whole disk the system boots from: the parent of the ESP partition."""
        if self.disk is not None:
            return self.disk
        dev = find_device(efi_label, timeout=5, near=mount_source(self.state_dir))
        if dev is None:
            raise StateError(f"no EFI partition (label {efi_label}) found")
        parent = Path(f"/sys/class/block/{Path(dev).name}").resolve().parent.name
        return Path("/dev") / parent

    def require_mode(self, action: str, allowed: tuple[Mode, ...], hint: str) -> Mode:
        mode = self.mode()
        if mode is None:
            raise StateError(
                f"{action} runs on a system booted by cos (no {self.run_dir}/*_mode)",
                hint=hint,
            )
        if mode not in allowed:
            raise StateError(f"{action} cannot run in {mode} mode", hint=hint)
        return mode
