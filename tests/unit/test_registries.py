"""registries.conf (files, format, choice of sources), the mirror walk, credential helpers."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cos.errors import ConfigError, ImageError, ToolError
from cos.oci import credentials, registries, remote
from cos.oci.reference import parse_ref
from cos.oci.registries import RegistriesConf, Source, load, parse
from cos.oci.registry import MismatchError, RegistryError

DIGEST = "sha256:" + "a" * 64


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    remote.forget()
    credentials.forget()
    yield
    remote.forget()
    credentials.forget()


def conf(text: str) -> RegistriesConf:
    return RegistriesConf(tuple(parse(text, Path("r.conf")).values()))


def names(c: RegistriesConf, ref: str) -> list[tuple[str, bool, bool]]:
    return [(s.name, s.insecure, s.mirror) for s in c.sources(parse_ref(ref))]


EXAMPLE = """
unqualified-search-registries = ["example.com"]
short-name-mode = "enforcing"
[aliases]
"x" = "example.com/x"

[[registry]]
prefix = "example.com/foo"
location = "internal.example.net/bar"

[[registry.mirror]]
location = "mirror-0.local/mirror-for-foo"

[[registry.mirror]]
location = "mirror-1.local:5000/mirrors/foo"
insecure = true

[[registry]]
location = "example.com"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true

[[registry.mirror]]
location = "cache.local"
pull-from-mirror = "digest-only"
"""


def test_mirrors_in_order_then_the_rewritten_location() -> None:
    c = conf(EXAMPLE)
    assert names(c, "example.com/foo/image:latest") == [
        ("mirror-0.local/mirror-for-foo/image", False, True),
        ("mirror-1.local:5000/mirrors/foo/image", True, True),
        ("internal.example.net/bar/image", False, False),
    ]
    # Writes go to the name as given.
    assert c.origin(parse_ref("example.com/foo/image:1")) == Source("example.com/foo/image")


def test_longest_prefix_wins_and_matches_end_at_a_path_part() -> None:
    c = conf(EXAMPLE)
    with pytest.raises(ConfigError, match=r"blocked in r\.conf"):
        c.sources(parse_ref("example.com/other:1"))
    with pytest.raises(ConfigError, match="blocked"):
        c.sources(parse_ref("example.com/foobar:1"))  # not under example.com/foo
    with pytest.raises(ConfigError, match="blocked"):
        c.origin(parse_ref("example.com/x:1"))
    assert names(c, "example.org/foo:1") == [("example.org/foo", False, False)]
    assert c.find("example.com:5000/foo") is None


def test_wildcard_prefix_and_pull_from_mirror() -> None:
    c = conf(EXAMPLE)
    assert names(c, "a.b.corp.example:5000/app:1") == [("a.b.corp.example:5000/app", True, False)]
    assert names(c, f"a.corp.example/app@{DIGEST}") == [
        ("cache.local/app", False, True),
        ("a.corp.example/app", True, False),
    ]
    assert conf(EXAMPLE).find("corp.example/app") is None
    tag_only = conf(
        '[[registry]]\nlocation = "r.test"\n[[registry.mirror]]\nlocation = "m.test"\n'
        'pull-from-mirror = "tag-only"\n'
    )
    assert names(tag_only, f"r.test/a@{DIGEST}") == [("r.test/a", False, False)]
    assert names(tag_only, "r.test/a:1") == [("m.test/a", False, True), ("r.test/a", False, False)]
    by_digest = conf(
        '[[registry]]\nlocation = "r.test"\nmirror-by-digest-only = true\n'
        '[[registry.mirror]]\nlocation = "m.test"\n'
    )
    assert names(by_digest, "r.test/a:1") == [("r.test/a", False, False)]
    assert len(names(by_digest, f"r.test/a:1@{DIGEST}")) == 2


def test_v1_format() -> None:
    c = conf(
        '[registries.search]\nregistries = ["a.test"]\n[registries.insecure]\n'
        'registries = ["b.test:5000"]\n[registries.block]\nregistries = ["c.test"]\n'
    )
    assert names(c, "b.test:5000/x:1") == [("b.test:5000/x", True, False)]
    with pytest.raises(ConfigError, match="blocked"):
        c.sources(parse_ref("c.test/x:1"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[[registry]\nlocation = 1", "not valid TOML"),
        ('[[registry]]\nlocation = "r.test"\ninsecure = "yes"', "insecure must be true or false"),
        ('[[registry]]\nlocation = "r.test"\nblock = true', "unknown key 'block'"),
        ('[[registry]]\nlocation = "https://127.0.0.1:5000"', "no URL scheme"),
        ('[[registry]]\nprefix = "r.test"', "location is unset"),
        ("[[registry]]\ninsecure = true", "neither prefix nor location"),
        ('[[registry]]\nprefix = "*.r.test/x"', "must be *.host"),
        ('[[registry]]\nlocation = "r.test"\n[[registry.mirror]]\ninsecure = true', "unset"),
        ('[[registry]]\nlocation = "r.test"\n[[registry.mirror]]\nlocation = "m"\nmirrors = 1', ""),
        (
            '[[registry]]\nlocation = "r.test"\n[[registry.mirror]]\nlocation = "m"\n'
            'pull-from-mirror = "sometimes"',
            "use all, digest-only or tag-only",
        ),
        (
            '[[registry]]\nlocation = "r.test"\nmirror-by-digest-only = true\n'
            '[[registry.mirror]]\nlocation = "m"\npull-from-mirror = "all"',
            "cannot be set with mirror-by-digest-only",
        ),
        ('[[registry]]\nlocation = "r.test"\npull-from-mirror = "all"', "belongs in"),
        ('registry = "r.test"', "array of tables"),
        ('[[registry]]\nlocation = "R io"', "not host[:port]"),
        ('[registries.block]\nregistries = ["a"]\n[[registry]]\nlocation = "b"', "mixes"),
    ],
)
def test_bad_files_are_refused_naming_the_file(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, Path("/etc/containers/registries.conf"))
    assert err.value.message.startswith("/etc/containers/registries.conf")
    assert words in err.value.message and "\n" not in err.value.message
    assert "containers-registries.conf(5)" in err.value.hint


def test_unknown_top_level_keys_are_only_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse('future-key = 1\n[[registry]]\nlocation = "r.test"', Path("f")).keys() == {
            "r.test"
        }
    assert "future-key" in caplog.text


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_files_are_found_where_the_containers_tools_look(tmp_path: Path) -> None:
    etc, home = tmp_path / "etc", tmp_path / "home"
    assert load({}, etc, home).registries == ()  # nothing there: no configuration
    main = _write(etc / "registries.conf", '[[registry]]\nlocation = "a.test"\ninsecure = true\n')
    _write(etc / "registries.conf.d/20-b.conf", '[[registry]]\nlocation = "a.test"\n')
    _write(etc / "registries.conf.d/10-c.conf", '[[registry]]\nlocation = "c.test"\nblocked = true')
    _write(etc / "registries.conf.d/ignored.txt", "not toml")
    c = load({}, etc, home)
    # Drop-ins in name order; a later table with the same prefix replaces the earlier.
    assert [p.name for p in c.files] == ["registries.conf", "10-c.conf", "20-b.conf"]
    assert names(c, "a.test/x:1") == [("a.test/x", False, False)]
    assert c.find("c.test/x") is not None

    other = _write(tmp_path / "other.conf", '[[registry]]\nlocation = "d.test"\n')
    c = load({"CONTAINERS_REGISTRIES_CONF": str(other)}, etc, home)
    assert [p.name for p in c.files] == ["other.conf", "10-c.conf", "20-b.conf"]
    assert c.find("a.test/x") is not None and c.find("d.test/x") is not None
    with pytest.raises(ConfigError, match="no such file"):
        load({"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "missing.conf")}, etc, home)

    # A per-user file replaces the system file and the system drop-ins.
    _write(home / ".config/containers/registries.conf", '[[registry]]\nlocation = "u.test"\n')
    c = load({}, etc, home)
    assert [p.name for p in c.files] == ["registries.conf"] and c.find("u.test/x") is not None
    assert main not in c.files

    _write(etc / "registries.conf.d/30-v1.conf", '[registries.block]\nregistries = ["x"]\n')
    with pytest.raises(ConfigError, match=r"30-v1\.conf: a drop-in must use the v2 format"):
        load({"CONTAINERS_REGISTRIES_CONF": str(other)}, etc, home)


def test_a_rewrite_into_no_image_name_is_refused() -> None:
    c = conf('[[registry]]\nprefix = "*.r.test"\nlocation = "m.test"\n')
    assert names(c, "a.r.test/x/y:1") == [("m.test/x/y", False, False)]
    bad = registries.Registry("r.test", registries.Endpoint("m.test/UP"), origin="f")
    with pytest.raises(ConfigError, match="no image name"):
        RegistriesConf((bad,)).sources(parse_ref("r.test/a:1"))


# -- the mirror walk -----------------------------------------------------------------


class FakeClient:
    """Answers per host: an exception to raise, or bytes to return."""

    answers: dict[str, list[BaseException | bytes]] = {}
    calls: list[tuple[str, str]] = []

    def __init__(self, host: str, tls_verify: bool) -> None:
        self.host, self.tls_verify = host, tls_verify

    def manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        FakeClient.calls.append((self.host, repo))
        got = FakeClient.answers[self.host].pop(0)
        if isinstance(got, BaseException):
            raise got
        return got, "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    monkeypatch.setattr(remote, "Client", FakeClient)
    FakeClient.calls = []
    return FakeClient


MIRRORED = conf(
    '[[registry]]\nlocation = "o.test/ns"\n[[registry.mirror]]\nlocation = "m1.test/c"\n'
    '[[registry.mirror]]\nlocation = "m2.test"\ninsecure = true\n'
)


def test_a_failing_mirror_is_skipped_and_not_asked_again(
    fake: type[FakeClient], caplog: pytest.LogCaptureFixture
) -> None:
    fake.answers = {
        "m1.test": [RegistryError("m1.test is not reachable: refused")],
        "m2.test": [RegistryError("manifest unknown", status=404), b"two"],
        "o.test": [b"one"],
    }
    repo = remote.Repository(parse_ref("o.test/ns/app:1"), conf=MIRRORED)
    with caplog.at_level(logging.INFO):
        assert repo.manifest("1") == (b"one", "application/vnd.oci.image.manifest.v1+json")
        assert repo.manifest("2")[0] == b"two"
    assert fake.calls == [
        ("m1.test", "c/app"),
        ("m2.test", "app"),
        ("o.test", "ns/app"),
        ("m2.test", "app"),
    ]
    assert "mirror m1.test: m1.test is not reachable: refused; reading manifest 1 from m2.test" in (
        caplog.text
    )
    assert "Reading o.test/ns/app through mirror m2.test/app" in caplog.text
    assert repo._client(repo.sources[1]).tls_verify is False  # insecure = true


def test_a_mirror_sending_other_content_is_an_error(fake: type[FakeClient]) -> None:
    fake.answers = {
        "m1.test": [MismatchError("sent a manifest with digest sha256:b")],
        "o.test": [],
    }
    repo = remote.Repository(parse_ref(f"o.test/ns/app@{DIGEST}"), conf=MIRRORED)
    with pytest.raises(MismatchError):
        repo.manifest(DIGEST)
    assert fake.calls == [("m1.test", "c/app")]


def test_the_registry_error_is_final(fake: type[FakeClient]) -> None:
    fake.answers = {
        "m1.test": [RegistryError("HTTP 503 (after 5 attempts)")],
        "m2.test": [RegistryError("asks for credentials", status=401)],
        "o.test": [RegistryError("manifest unknown", status=404)],
    }
    repo = remote.Repository(parse_ref("o.test/ns/app:1"), conf=MIRRORED)
    with pytest.raises(RegistryError, match="manifest unknown"):
        repo.manifest("1")
    # Writes and the reads that prepare them use the name as given.
    fake.answers = {"o.test": [b"x"]}
    assert remote.Repository(parse_ref("o.test/ns/app:1"), write=True, conf=MIRRORED).manifest("1")
    assert fake.calls[-1] == ("o.test", "ns/app")


# -- credential helpers --------------------------------------------------------------


def _helper(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("XDG_RUNTIME_DIR", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    log = tmp_path / "calls"
    _helper(
        bin_dir,
        "good",
        f'read -r server; echo "$0 $* <$server>" >> {log}\n'
        'if [ "$server" = "reg.example:5000" ]; then\n'
        '  printf \'{"ServerURL":"%s","Username":"robot","Secret":"s3cr3t"}\' "$server"\n'
        'else echo "credentials not found in native keychain"; exit 1; fi\n',
    )
    _helper(bin_dir, "broken", 'echo "keyring locked" >&2; exit 3\n')
    _helper(bin_dir, "garbled", "echo 'Secret: s3cr3t'\n")
    return tmp_path


def _docker_config(home: Path, doc: dict[str, object]) -> None:
    _write(home / ".docker/config.json", json.dumps(doc))


def test_cred_helpers_and_creds_store(home: Path) -> None:
    _docker_config(home, {"credHelpers": {"reg.example:5000": "good"}})
    assert credentials.credentials("reg.example:5000") == ("robot", "s3cr3t")
    assert credentials.credentials("reg.example:5000") == ("robot", "s3cr3t")
    assert credentials.credentials("other.example") is None
    # The server came on stdin and the helper ran once (answers are kept).
    calls = (home / "calls").read_text().splitlines()
    assert calls == [f"{home}/bin/docker-credential-good get <reg.example:5000>"]

    credentials.forget()
    _docker_config(home, {"credsStore": "good", "auths": {"other.example": {"auth": "dTpw"}}})
    assert credentials.credentials("reg.example:5000") == ("robot", "s3cr3t")
    # The store knows nothing of other.example: the file's own entry answers.
    assert credentials.credentials("other.example") == ("u", "p")


@pytest.mark.parametrize(
    ("helper", "words"),
    [
        ("missing", "credential helper docker-credential-missing (named in"),
        ("broken", "docker-credential-broken failed for reg.example:5000 (exit 3): keyring locked"),
        ("garbled", "docker-credential-garbled gave an unreadable answer"),
        ("../evil", "invalid credential helper name"),
    ],
)
def test_a_helper_that_fails_is_named(home: Path, helper: str, words: str) -> None:
    _docker_config(home, {"credHelpers": {"reg.example:5000": helper}})
    with pytest.raises((ToolError, ImageError)) as err:
        credentials.credentials("reg.example:5000")
    assert words in err.value.message and "s3cr3t" not in err.value.message
