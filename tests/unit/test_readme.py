"""The README's commands cannot drift from what works: every `cos` line parses with
the CLI as it is, every `make` target exists, and the build commands against the
plain-HTTP registry carry --tls-verify=false. (tests/integration/test_readme.py runs
the build → push → build-disk lines verbatim, under `make test-extended`.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cos.cli.table import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PLAIN_HTTP = "127.0.0.1:5000"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def commands(sh_blocks: list[str] | None = None) -> list[list[str]]:
    """The shell lines of sh blocks (all of the README's by default), split at `&&`,
    comments dropped."""
    out = []
    for block in blocks("sh") if sh_blocks is None else sh_blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                out.append(shlex.split(part))
    return out


@pytest.mark.parametrize(
    "cmd", [c for c in commands() if c[0] == "cos"], ids=lambda c: " ".join(c[:2])
)
def test_cos_lines_parse(cmd: list[str]) -> None:
    try:
        build_parser().parse_args(cmd[1:])
    except SystemExit as exc:
        pytest.fail(f"README: `{shlex.join(cmd)}` does not parse (exit {exc.code})")


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    used = {
        a
        for c in commands()
        if c[0] == "make"
        for a in c[1:]
        if "=" not in a and not a.startswith("-")
    }
    used |= set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    assert used and used <= targets, used - targets


def test_plain_http_registry_commands_skip_tls() -> None:
    """buildah talks HTTPS unless told: FROM and push to the README's registry need the
    flag (without it: "server gave HTTP response to HTTPS client")."""
    docker = "".join(blocks("Dockerfile"))
    assert f"FROM {PLAIN_HTTP}/cos/base:latest" in docker
    # `make vanilla REGISTRY=…` is what puts cos/base there.
    script = (ROOT / "images/build.sh").read_text()
    assert "pushed_tag=latest\n" in script and '"docker://$REGISTRY/cos/$t:$pushed_tag"' in script
    build = [c for c in commands() if c[0] == "buildah"]
    assert {"bud", "push"} <= {a for c in build for a in c}
    for c in build:
        if any(PLAIN_HTTP in a for a in c):
            assert "--tls-verify=false" in c, shlex.join(c)
    for c in commands():
        if c[0] == "cos" and any(a.startswith(PLAIN_HTTP) for a in c):
            assert "--tls-verify=false" in c, shlex.join(c)
