from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cos.config import Labels, Partitions
from cos.disk.plan import MIB, plan_disk, sgdisk_args
from cos.errors import DiskError


def test_default_layout_order_labels_and_alignment() -> None:
    plan = plan_disk(Partitions(), Labels())
    assert [p.name for p in plan.parts] == ["bios", "efi", "oem", "recovery", "state", "persistent"]
    assert [p.label for p in plan.parts] == [
        None,
        "COS_GRUB",
        "COS_OEM",
        "COS_RECOVERY",
        "COS_STATE",
        "COS_PERSISTENT",
    ]
    assert plan.parts[0].start_mib == 1
    assert plan.part("state").size_mib == 8192
    for a, b in zip(plan.parts, plan.parts[1:], strict=False):
        assert a.start_mib + a.size_mib == b.start_mib


def test_persistent_takes_the_rest_of_a_given_size() -> None:
    plan = plan_disk(Partitions(recovery=512, state=2048), Labels(), disk_mib=4096)
    last = plan.parts[-1]
    assert last.start_mib + last.size_mib == 4096 - 1  # backup GPT room


def test_too_small_disk_is_refused_with_the_needed_size() -> None:
    with pytest.raises(DiskError, match=r"too small: the layout needs at least \d+ MiB"):
        plan_disk(Partitions(), Labels(), disk_mib=2048)


@given(
    st.integers(16, 512),
    st.integers(16, 512),
    st.integers(16, 4096),
    st.integers(16, 4096),
    st.integers(0, 4096),
    st.integers(0, 20000),
)
def test_plans_never_overlap_or_exceed(
    efi: int, oem: int, rec: int, state: int, pers: int, extra: int
) -> None:
    sizes = Partitions(efi=efi, oem=oem, recovery=rec, state=state, persistent=pers)
    disk = 1 + 1 + efi + oem + rec + state + max(pers, 64) + 1 + extra
    plan = plan_disk(sizes, Labels(), disk_mib=disk)
    end = 0
    for p in plan.parts:
        assert p.start_mib >= end and p.offset % MIB == 0
        end = p.start_mib + p.size_mib
    assert end * MIB <= plan.size_mib * MIB - MIB


def test_sgdisk_args_name_every_partition() -> None:
    args = sgdisk_args(plan_disk(Partitions(), Labels()))
    assert "--change-name=1:bios" in args and "--typecode=1:EF02" in args
    assert "--typecode=2:EF00" in args and "--change-name=6:persistent" in args


def test_expandable_layout_stops_after_recovery() -> None:
    plan = plan_disk(Partitions(recovery=512), Labels(), expandable=True)
    assert [p.name for p in plan.parts] == ["bios", "efi", "oem", "recovery"]
    rec = plan.part("recovery")
    assert plan.size_mib == rec.start_mib + rec.size_mib + 1  # just the backup GPT after it
    with pytest.raises(KeyError):
        plan.part("state")
    with pytest.raises(DiskError, match="too small"):
        plan_disk(Partitions(recovery=512), Labels(), disk_mib=200, expandable=True)
