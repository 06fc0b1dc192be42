"""The first boot of an expandable disk, as a cloud-config kept on COS_OEM.

build-disk --expandable writes a small disk (bios, efi, oem, recovery); the state and
persistent partitions are added on the machine, at the size its disk has there.
"""

from __future__ import annotations

import yaml

from cos.config import Config

DEFAULT_DEPLOY_COMMAND = "cos reset"
EXPAND_CONFIG = "00_expand-disk.yaml"


def expand_config(cfg: Config, deploy_command: str) -> str:
    """The first-boot cloud-config of an expandable disk, kept on COS_OEM.

    GRUB boots recovery while there is no state filesystem; there, in the boot stage,
    the state and persistent partitions are added after recovery (persistent takes
    the rest of the disk, however large it has become) and the system is deployed.
    The file removes itself only once the deploy succeeded, so an interruption (power
    loss) repeats the whole step on the next boot: adding partitions skips those that
    exist, and the deploy formats the state partition again.
    """
    me = f"{cfg.layout.oem_mount.rstrip('/')}/{EXPAND_CONFIG}"
    guard = f"[ -e /run/cos/recovery_mode ] && [ -e {me} ]"
    p, labels = cfg.partitions, cfg.labels
    doc = {
        "name": "Expand the disk and deploy the system (first boot of an expandable disk)",
        "stages": {
            "boot": [
                {
                    "name": "Add the state and persistent partitions",
                    "if": guard,
                    "layout": {
                        "device": {"path": f"script://{_RECOVERY_DISK.format(labels.recovery)}"},
                        "add_partitions": [
                            {
                                "fsLabel": labels.state,
                                "pLabel": "state",
                                "size": p.state,
                                "filesystem": "ext4",
                            },
                            {
                                "fsLabel": labels.persistent,
                                "pLabel": "persistent",
                                "size": p.persistent,
                                "filesystem": "ext4",
                            },
                        ],
                    },
                },
                {
                    "name": "Deploy the system from recovery, then boot it",
                    "if": guard,
                    "commands": [f"{deploy_command} && rm -f {me} && sync && systemctl reboot"],
                },
            ]
        },
    }
    return "# Written by cos build-disk --expandable; removes itself once deployed.\n" + (
        yaml.safe_dump(doc, sort_keys=False, width=1000)
    )


# The disk holding the recovery partition the system booted from (found by its
# filesystem label, the partition, then its parent disk).
_RECOVERY_DISK = "echo /dev/$(lsblk -no PKNAME $(blkid -L {}) | head -n1)"
