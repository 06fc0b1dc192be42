"""Random and mutated command lines and config files against the CLI entry.

Whatever comes in, cos answers with a documented exit code and, on failure, exactly
one `cos: error:` line (and its hint) — never `internal error`, never a traceback.
Commands run in-process in a temp directory; only verbs that cannot touch the host
(no install, upgrade, init, reset, cloud-init, boot-assessment) are drawn, paths are
relative, and the network is cut off, so the only place written is the temp dir.
With `-s` the counts are printed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cos.cli import main
from cos.cli.table import Arg, OneOf
from cos.cli.verbs import VERBS
from cos.config import Config
from cos.errors import MEANINGS, ExitCode
from tests.support.malicious_layers import Layer, oci_layout

DOCUMENTED = {int(c) for c in MEANINGS} - {int(ExitCode.BUG)}
SAFE_VERBS = ("status", "inspect", "pull-image", "sign", "generate-key-pair", "completion")
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

COUNTS: Counter[str] = Counter()

# Tokens users (and scripts with a bug) pass: empty, dots, long, control characters,
# credentials, wrong transports, numbers out of range, option look-alikes.
HOSTILE = [
    "",
    ".",
    "..",
    "-",
    "--",
    "-x",
    "--no-such-flag",
    "n" * 300,
    "a\nb",
    "\x1b[31mred",
    "tab\there",
    "ü-ñ-✓",
    "user:pw@127.0.0.1:9/repo",
    "docker://user:pw@127.0.0.1:9/repo:tag",
    "docker://127.0.0.1:9/repo@sha256:" + "0" * 64,
    "127.0.0.1:9/repo:" + "t" * 200,
    "oci:",
    "oci:nowhere:x",
    "oci:img",
    "oci:img:latest",
    "oci:img:nope",
    "oci-archive:nowhere.tar",
    "dir:",
    "dir:nowhere",
    "containers-storage:x",
    "http://x",
    "1e999",
    "-1",
    "0",
    "9" * 5000,
    "banana",
    "true",
    "false",
    "{}",
    "[]",
    "%s%n",
    "KEY=VALUE",
    "=",
    "bash",
]
_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"),
    max_size=40,
)
TOKEN = st.one_of(st.sampled_from(HOSTILE), _TEXT)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    total = sum(COUNTS[k] for k in ("ok", "clean", "internal"))
    print(
        f"\nrobustness: {total} inputs, {COUNTS['ok']} accepted, {COUNTS['clean']} clean errors,"
        f" {COUNTS['internal']} internal errors"
    )


@pytest.fixture
def sandbox(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp cwd with an empty config, a small OCI layout `img`, and no network."""
    box = tmp_path_factory.mktemp("robust")
    (box / "etc").mkdir()
    oci_layout(box / "image", [Layer().dir("etc").file("etc/os-release", b"NAME=x\n").bytes()])
    (box / "img").symlink_to(box / "image/oci")
    monkeypatch.chdir(box)
    monkeypatch.setenv("COS_CONFIG_DIR", str(box / "etc"))
    monkeypatch.setenv("COS_CACHE_DIR", str(box / "cache"))
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "the robustness suite has no network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return box


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # --help, --version: argparse exits on its own
            rc = exc.code if isinstance(exc.code, int) else 0
    return rc, err.getvalue()


def check(argv: list[str]) -> None:
    """The contract: documented exit code; on failure one error line, then its hint."""
    rc, err = run_cli(argv)
    if "internal error" in err or rc == ExitCode.BUG:
        COUNTS["internal"] += 1
    else:
        COUNTS["ok" if rc == 0 else "clean"] += 1
    assert "internal error" not in err, (argv, err)
    assert "Traceback" not in err or "--debug" in argv, (argv, err)
    assert rc in DOCUMENTED or rc == 0, (argv, rc, err)
    if rc != 0:
        lines = err.splitlines()
        errors = [i for i, x in enumerate(lines) if x.startswith("cos: ")]
        assert len(errors) == 1, (argv, err)
        i = errors[0]
        assert lines[i].startswith(("cos: error: ", "cos: interrupted")), (argv, err)
        assert i + 1 == len(lines) or lines[i + 1].startswith("hint: "), (argv, err)


# --- command lines ------------------------------------------------------------------------


def _specs(name: str) -> list[Arg]:
    out: list[Arg] = []
    for spec in VERBS[name].args:
        out.extend(spec.args if isinstance(spec, OneOf) else (spec,))
    return out


@st.composite
def command_line(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(SAFE_VERBS))
    argv = draw(st.lists(st.sampled_from(["--debug", "--quiet", "-q"]), max_size=2))
    argv.append(name)
    for a in _specs(name):
        positional = not a.flags[0].startswith("-")
        if not positional and not draw(st.booleans()):
            continue
        if not positional:
            argv.append(draw(st.sampled_from(a.flags)))
        if a.options.get("action") in ("store_true", "store_false"):
            continue
        choices = a.options.get("choices")
        argv.append(draw(st.sampled_from(list(choices)) if choices else TOKEN))
    if VERBS[name].events and draw(st.booleans()):
        argv.append("--json")
    # mutate: drop, repeat or insert tokens, as a script with a bug would
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(argv)))
        op = draw(st.sampled_from(["drop", "dup", "insert"]))
        if op == "drop" and i < len(argv):
            del argv[i]
        elif op == "dup" and i < len(argv):
            argv.insert(i, argv[i])
        else:
            argv.insert(i, draw(TOKEN))
    return argv


@SETTINGS
@given(argv=command_line())
def test_command_lines(sandbox: Path, argv: list[str]) -> None:
    check(argv)


# --- config files -------------------------------------------------------------------------

_KEYS = [f.name.replace("_", "-") for f in dataclasses.fields(Config)]
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(HOSTILE),
    _TEXT,
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), _TEXT), inner, max_size=4),
    ),
    max_leaves=12,
)
_MAPPING = st.dictionaries(st.one_of(st.sampled_from(_KEYS), _TEXT), _VALUE, max_size=6)
_YAML_NOISE = [*":[]{}&*!|>'\"%@`#-,?\n\t ", "!!python/object:os.system", "<<: *a", "&a"]


@st.composite
def config_text(draw: st.DrawFn) -> str:
    text = yaml.safe_dump(draw(_MAPPING), allow_unicode=True)
    for _ in range(draw(st.integers(0, 4))):  # mutate the document as text
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:i] + draw(st.sampled_from(_YAML_NOISE)) + text[i:]
        else:
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
    return text


_ENV = st.dictionaries(
    st.sampled_from([f"COS_{k.upper().replace('-', '_')}" for k in _KEYS] + ["COS_X__Y"]),
    st.one_of(st.sampled_from(HOSTILE), _TEXT).filter(lambda s: "\x00" not in s),
    max_size=3,
)


@SETTINGS
@given(
    text=st.one_of(config_text(), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
    dropin=st.none() | config_text(),
    env=_ENV,
    argv=st.sampled_from(
        [["status"], ["inspect", "oci:img:latest"], ["pull-image", "oci:nowhere:x", "d"]]
    ),
)
def test_config_files(
    sandbox: Path, text: str, dropin: str | None, env: dict[str, str], argv: list[str]
) -> None:
    conf = sandbox / "etc"
    (conf / "config.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    if dropin is not None:
        (conf / "config.d").mkdir(exist_ok=True)
        (conf / "config.d/50-x.yaml").write_text(dropin)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        check(argv)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        (conf / "config.d/50-x.yaml").unlink(missing_ok=True)


def test_the_alphabet_reaches_the_parser() -> None:
    """The token pool keeps its shapes (a refactor dropping them would fuzz nothing)."""
    assert any(set(t) & set(string.whitespace) for t in HOSTILE)
    assert any("@" in t for t in HOSTILE) and any(len(t) > 255 for t in HOSTILE)
