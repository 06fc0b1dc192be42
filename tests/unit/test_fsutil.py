from __future__ import annotations

import os
from pathlib import Path

from cos.fsutil import (
    atomic_write,
    ceil_div,
    regular_file_in_tree,
    resolve_in_tree,
    tree_usage,
)


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "etc/cos").mkdir(parents=True)
    (tree / "boot/vmlinuz-6").write_text("kernel")
    (tree / "boot/vmlinuz").symlink_to("vmlinuz-6")
    (tree / "boot/abs").symlink_to("/boot/vmlinuz-6")
    (tree / "etc/cos/evil").symlink_to("/etc/hostname")  # absolute: must stay in the tree
    (tree / "etc/cos/dotdot").symlink_to("../../../../../../../../etc/hostname")
    (tree / "etc/cos/loop").symlink_to("loop")
    (tree / "etc/cos/dev").symlink_to("/dev/null")
    return tree


def test_symlinks_resolve_inside_the_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    assert resolve_in_tree(tree, "/boot/vmlinuz") == tree / "boot/vmlinuz-6"
    assert resolve_in_tree(tree, "/boot/abs") == tree / "boot/vmlinuz-6"
    # The host has /etc/hostname; the tree does not: nothing may be found.
    assert Path("/etc/hostname").exists()
    assert resolve_in_tree(tree, "/etc/cos/evil") is None
    assert resolve_in_tree(tree, "/etc/cos/dotdot") is None
    assert resolve_in_tree(tree, "/etc/cos/loop") is None
    (tree / "etc/hostname").write_text("image\n")
    assert resolve_in_tree(tree, "/etc/cos/evil") == tree / "etc/hostname"
    assert resolve_in_tree(tree, "/etc/cos/dotdot") == tree / "etc/hostname"


def test_regular_file_only(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "dev").mkdir()
    os.mknod(tree / "dev/null", 0o600 | 0o010000)  # a fifo standing in for a device
    assert regular_file_in_tree(tree, "/etc/cos/dev") is None
    assert regular_file_in_tree(tree, "/boot") is None
    assert regular_file_in_tree(tree, "/boot/vmlinuz") == tree / "boot/vmlinuz-6"


def test_tree_usage_counts_blocks_and_hardlinks_once(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a").write_bytes(b"x")
    os.link(tree / "a", tree / "b")
    (tree / "c").write_bytes(b"y" * 5000)
    usage = tree_usage(tree)
    assert usage.entries == 2 and usage.bytes == 4096 + 8192


def test_atomic_write_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "f"
    atomic_write(p, "one")
    atomic_write(p, "two", mode=0o600)
    assert p.read_text() == "two" and (p.stat().st_mode & 0o777) == 0o600
    assert [x.name for x in tmp_path.iterdir()] == ["f"]


def test_ceil_div() -> None:
    mib = 1024 * 1024
    assert [ceil_div(n, mib) for n in (0, 1, mib - 1, mib, mib + 1)] == [0, 1, 1, 1, 2]
    assert ceil_div(4097, 4096) * 4096 == 8192
