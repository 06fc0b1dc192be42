"""Generated reference pages and completions match the code they come from."""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest

from cos.cli import build_parser
from cos.cloudinit.schema import BOOT_STAGES, HOOK_STAGES
from cos.config import Config, Labels, Layout, Partitions
from cos.docgen import REGENERATE, completion, generated
from cos.errors import MEANINGS, ExitCode

ROOT = Path(__file__).parents[2]
OUTPUTS = generated(build_parser())


@pytest.mark.parametrize("rel", sorted(OUTPUTS))
def test_committed_file_is_up_to_date(rel: str) -> None:
    path = ROOT / rel
    committed = path.read_text() if path.exists() else ""
    if committed != OUTPUTS[rel]:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                OUTPUTS[rel].splitlines(keepends=True),
                f"{rel} (committed)",
                f"{rel} (generated)",
                n=1,
            )
        )
        pytest.fail(f"{rel} is out of date; regenerate with `{REGENERATE}`:\n{diff[:4000]}")


def test_config_page_lists_every_key_with_its_doc() -> None:
    page = OUTPUTS["docs/config.md"]
    for key in ("max-snaps", "boot-attempts", "partitions.state", "layout.persistent-mount"):
        assert f"| `{key}` |" in page
    assert "`COS_PARTITIONS__STATE`" in page
    for cls in (Config, Partitions, Labels, Layout):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(hints[f.name]):
                assert f.metadata.get("doc"), f"config key {f.name} has no doc"


def test_exit_code_page_covers_every_code() -> None:
    page = OUTPUTS["docs/exit-codes.md"]
    assert set(MEANINGS) == set(ExitCode)
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \| `{code.name}` \|", page, re.M)


def test_every_hook_an_action_runs_is_documented() -> None:
    names = set()
    hook_call = re.compile(r'run_(?:chroot_|sandboxed_)?hook\(\s*"([a-z-]+)"')
    for src in (ROOT / "src/cos/actions").glob("*.py"):
        names |= set(hook_call.findall(src.read_text()))
    assert names, "no hooks found: the pattern no longer matches the actions"
    assert names == set(HOOK_STAGES)
    page = OUTPUTS["docs/cloud-config.md"]
    for name in [*names, *BOOT_STAGES]:
        assert f"| `{name}` |" in page


def test_unsupported_plugins_are_marked() -> None:
    page = OUTPUTS["docs/cloud-config.md"]
    assert re.search(r"^\| `git` \|.*\| not supported \|", page, re.M)
    assert re.search(r"^\| `files` \| .* \| 5\. \|", page, re.M)


# -- shell completion ------------------------------------------------------------------

BASH = OUTPUTS[f"src/cos/data/completion/{completion.BASH_FILE}"]
ZSH = OUTPUTS[f"src/cos/data/completion/{completion.ZSH_FILE}"]


def _complete(tmp_path: Path, words: list[str]) -> list[str]:
    script = tmp_path / "cos.bash"
    script.write_text(BASH)
    quoted = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            f"source {script}; complete -p cos; COMP_WORDS=({quoted}); "
            f'COMP_CWORD={len(words) - 1}; _cos; printf "%s\\n" "${{COMPREPLY[@]}}"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "complete -o default -F _cos cos"
    return [w for w in out[1:] if w]


def test_bash_script_is_valid(tmp_path: Path) -> None:
    script = tmp_path / "cos.bash"
    script.write_text(BASH)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_bash_completes_commands_flags_and_values(tmp_path: Path) -> None:
    assert _complete(tmp_path, ["cos", "bui"]) == ["build-disk", "build-iso"]
    assert _complete(tmp_path, ["cos", "up"]) == ["upgrade", "upgrade-recovery"]
    assert "completion" not in _complete(tmp_path, ["cos", ""])  # hidden command
    assert _complete(tmp_path, ["cos", "--config-dir", "/etc", "roll"]) == ["rollback"]
    assert _complete(tmp_path, ["cos", "upgrade", "--re"]) == ["--recovery", "--reboot"]
    assert _complete(tmp_path, ["cos", "build-disk", "x", "--type", "q"]) == ["qcow2"]
    assert _complete(tmp_path, ["cos", "upgrade", "--tls-verify", ""]) == ["true", "false"]
    assert "--state-dir" not in _complete(tmp_path, ["cos", "upgrade", "--"])  # hidden flag


def test_bash_completes_file_arguments(tmp_path: Path) -> None:
    (tmp_path / "user.yaml").write_text("")
    got = _complete(tmp_path, ["cos", "build-disk", "img", "--cloud-init", f"{tmp_path}/us"])
    assert got == [f"{tmp_path}/user.yaml"]


def test_zsh_script(tmp_path: Path) -> None:
    assert ZSH.startswith("#compdef cos\n")
    for cmd in ("build-disk", "upgrade", "rollback", "status"):
        assert re.search(rf"^ {{16}}'{cmd}:", ZSH, re.M), cmd
        assert re.search(rf"^ {{16}}{cmd}\)$", ZSH, re.M), cmd
    assert (
        "'--type=[raw (default), qcow2, vhd (Azure fixed VHD), gce (disk.raw in a tar.gz)]" in ZSH
    )
    assert ":TYPE:(raw qcow2 vhd gce)'" in ZSH
    assert "'completion:" not in ZSH and "completion)" not in ZSH and "--state-dir" not in ZSH
    # Balanced single quotes on every line: a quoting slip breaks the whole file.
    for line in ZSH.splitlines():
        assert line.replace("'\\''", "").count("'") % 2 == 0, line
    zsh = shutil.which("zsh")
    if zsh:
        script = tmp_path / "_cos"
        script.write_text(ZSH)
        subprocess.run([zsh, "-n", str(script)], check=True)


def test_completion_command_prints_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    from cos.cli import main

    assert main(["completion", "bash"]) == 0
    assert capsys.readouterr().out == BASH
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out == ZSH
