"""images/cache.sh: files kept by recipe hash, restored only for the same hash, the
newest three builds of a kind kept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "images/cache.sh"


def _cache(cache: Path, *args: str | Path) -> int:
    env = {**os.environ, "COS_IMAGE_CACHE": str(cache)}
    argv = ["bash", str(SCRIPT), *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, check=False).returncode


def test_a_file_comes_back_only_for_its_own_hash(tmp_path: Path) -> None:
    cache, disk = tmp_path / "cache", tmp_path / "disk-1.raw"
    with disk.open("wb") as f:
        f.seek(64 << 20)  # mostly a hole, as a fresh disk image is
        f.write(b"end")
    sums = tmp_path / "disk-1.raw.sha256"
    sums.write_text("abc  disk-1.raw\n")
    assert _cache(cache, "keep-file", "disk-e2e", "a1", disk, sums) == 0
    disk.unlink()
    sums.unlink()
    assert _cache(cache, "restore-file", "disk-e2e", "a2", disk) == 1
    assert not disk.exists()
    assert _cache(cache, "restore-file", "disk-e2e", "a1", disk, sums) == 0
    assert disk.stat().st_size == (64 << 20) + 3 and disk.read_bytes()[-3:] == b"end"
    assert disk.stat().st_blocks * 512 < 1 << 20  # still sparse
    assert sums.read_text() == "abc  disk-1.raw\n"
    # A file the build did not keep is a miss, not half a restore.
    other = tmp_path / "other"
    assert _cache(cache, "restore-file", "disk-e2e", "a1", disk, other) == 1
    assert not other.exists()


def test_the_newest_three_builds_of_a_kind_stay(tmp_path: Path) -> None:
    cache, f = tmp_path / "cache", tmp_path / "f"
    f.write_text("x")
    for i, h in enumerate(["b1", "b2", "b3", "b4"]):
        assert _cache(cache, "keep-file", "iso-live", h, f) == 0
        os.utime(cache / "kept" / f"iso-live.{h}", (1000 + i, 1000 + i))
    assert _cache(cache, "keep-file", "iso-other", "c1", f) == 0
    assert sorted(p.name for p in (cache / "files").iterdir()) == [
        "iso-live.b2",
        "iso-live.b3",
        "iso-live.b4",
        "iso-other.c1",
    ]
    assert _cache(cache, "restore-file", "iso-live", "b1", tmp_path / "f") == 1
