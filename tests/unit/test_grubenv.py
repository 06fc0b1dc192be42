from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cos.boot import grubenv
from tests.conftest import need

names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#\\"),
    min_size=1,
    max_size=12,
)
values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\n") | st.just("\\"),
    max_size=20,
)


@given(st.dictionaries(names, values, max_size=8))
def test_render_parse_roundtrip(env: dict[str, str]) -> None:
    block = grubenv.render(env)
    assert len(block) == grubenv.BLOCK_SIZE
    assert grubenv.parse(block) == env


def test_block_too_small_is_an_error() -> None:
    with pytest.raises(grubenv.GrubenvError, match="too small"):
        grubenv.render({"x": "y" * 2000})


def test_bad_signature() -> None:
    with pytest.raises(grubenv.GrubenvError, match="signature"):
        grubenv.parse(b"hello")


def test_byte_identical_to_grub_editenv(tmp_path: Path) -> None:
    need("grub-editenv")
    theirs = tmp_path / "theirs"
    subprocess.run(["grub-editenv", str(theirs), "create"], check=True)
    subprocess.run(
        [
            "grub-editenv",
            str(theirs),
            "set",
            "next_entry=recovery",
            "saved_entry=active",
            "extra_cmdline=a\\b",
        ],
        check=True,
    )
    subprocess.run(["grub-editenv", str(theirs), "unset", "saved_entry"], check=True)
    ours = tmp_path / "ours"
    grubenv.update(
        ours, {"next_entry": "recovery", "saved_entry": "active", "extra_cmdline": "a\\b"}
    )
    grubenv.update(ours, unset=("saved_entry",))
    assert ours.read_bytes() == theirs.read_bytes()
    out = subprocess.run(
        ["grub-editenv", str(ours), "list"], check=True, capture_output=True, text=True
    )
    assert out.stdout.splitlines() == ["next_entry=recovery", "extra_cmdline=a\\b"]


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(names, st.text(alphabet="abcXYZ019 =-_/.", max_size=20), max_size=6))
def test_grub_editenv_reads_what_we_write(env: dict[str, str]) -> None:
    if shutil.which("grub-editenv") is None:
        need("grub-editenv")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "env"
        grubenv.write(p, env)
        out = subprocess.run(
            ["grub-editenv", str(p), "list"], check=True, capture_output=True, text=True
        )
        assert out.stdout.splitlines() == [f"{k}={v}" for k, v in env.items()]
