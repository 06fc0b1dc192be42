"""Under --root nothing is written, read or probed outside the target; --dry-run runs
no shell and reaches no network."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cos import run as runner
from cos.cloudinit.loader import load_text
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.runner import Summary, run_stage, template_values

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"


def make_root(base: Path) -> Path:
    r = base / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text(PASSWD)
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/group").write_text("root:x:0:\nusers:x:100:\n")
    return r


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every subprocess a plugin starts, recorded instead of run."""
    seen: list[list[str]] = []

    def fake(argv: list[str], **kw: Any) -> runner.Result:
        seen.append(list(argv))
        return runner.Result(tuple(argv), 1, "", "")

    monkeypatch.setattr(runner, "run", fake)
    yield seen


def apply(root: Path, text: str, *, dry_run: bool = False) -> tuple[Summary, Context]:
    loaded = load_text(text, "t.yaml")
    assert not loaded.errors, loaded.errors
    ctx = Context(root=root, dry_run=dry_run, values=template_values(root))
    return run_stage("boot", loaded.documents, ctx), ctx


def test_a_userdata_name_cannot_leave_the_directory(root: Path, tmp_path: Path) -> None:
    (root / "seed").write_text("#cloud-config\n")
    for name in ("../../../outside-a", str(tmp_path / "outside-a"), ".."):
        summary, _ = apply(
            root,
            "stages:\n  boot:\n    - datasource: {providers: [file], path: /seed,"
            f" userdata_name: '{name}'}}\n",
        )
        assert summary.failed and "must be a file name" in summary.results[0].detail
    assert not (tmp_path / "outside-a").exists() and not list(tmp_path.glob("outside*"))


def test_b_systemd_firstboot_keys_cannot_replace_the_root(
    root: Path, commands: list[list[str]]
) -> None:
    summary, _ = apply(root, "stages:\n  boot:\n    - systemd_firstboot: {root: /, keymap: us}\n")
    assert summary.failed and "'root' is not a setting" in summary.results[0].detail
    assert commands == []
    apply(root, "stages:\n  boot:\n    - systemd_firstboot: {keymap: us}\n")
    assert commands == [["systemd-firstboot", "--keymap=us", f"--root={root}"]]


def test_b_systemctl_unit_names_are_not_options(root: Path, commands: list[list[str]]) -> None:
    apply(root, "stages:\n  boot:\n    - systemctl: {enable: ['--root=/']}\n")
    assert commands == [["systemctl", f"--root={root}", "enable", "--", "--root=/"]]


def test_c_templates_read_the_targets_files_only(root: Path) -> None:
    (root / "etc/hostname").write_text("target-name\n")
    (root / "etc/machine-id").symlink_to("/etc/hostname")
    apply(
        root,
        "stages:\n  boot:\n    - files:\n        - path: /out\n"
        "          content: '{{ .MachineID }} {{ .Values.node.hostname }}'\n",
    )
    out = (root / "out").read_text()
    assert out == "target-name target-name"
    assert socket.gethostname() not in out or socket.gethostname() == "target-name"


@pytest.mark.parametrize(
    "user",
    [
        {"gecos": "x\nevil::0:0::/:/bin/sh"},
        {"shell": "/bin/sh\nevil::0:0::/:/bin/sh"},
        {"homedir": "/home/x\nevil::0:0::/:/bin/sh"},
        {"gecos": "a:b"},
        {"groups": ["users\nevil"]},
    ],
)
def test_d_user_fields_cannot_add_rows(root: Path, user: dict[str, Any]) -> None:
    summary, _ = apply(root, yaml.safe_dump({"stages": {"boot": [{"users": {"bob": user}}]}}))
    assert summary.failed and "must not contain" in summary.results[0].detail
    assert (root / "etc/passwd").read_text() == PASSWD


def test_d_entity_fields_cannot_add_rows(root: Path) -> None:
    entity = 'kind: user\nusername: bob\nuid: 1000\ngid: 100\ninfo: "a\\nevil::0:0::/:/bin/sh"\n'
    summary, _ = apply(
        root, yaml.safe_dump({"stages": {"boot": [{"ensure_entities": [{"entity": entity}]}]}})
    )
    assert summary.failed and "must not contain" in summary.results[0].detail
    assert (root / "etc/passwd").read_text() == PASSWD


def test_datasource_under_root_probes_no_host_device(root: Path, commands: list[list[str]]) -> None:
    summary, _ = apply(
        root, "stages:\n  boot:\n    - datasource: {providers: [cdrom, config-drive]}\n"
    )
    assert summary.failed and commands == []


def test_a_fifo_in_the_target_is_not_opened(root: Path) -> None:
    (root / "etc/hosts").unlink(missing_ok=True)
    os.mkfifo(root / "etc/hosts")
    summary, _ = apply(root, "stages:\n  boot:\n    - hostname: node1\n")
    assert summary.failed and "not a regular file" in summary.results[0].detail


def test_dry_run_runs_no_shell_and_reaches_no_network(
    root: Path, commands: list[list[str]], http_files: Callable[[dict[str, bytes]], str]
) -> None:
    class Hits(dict[str, bytes]):
        count = 0

        def get(self, key: str, default: Any = None) -> Any:
            Hits.count += 1
            return super().get(key, default)

    base = http_files(Hits({"/k": b"ssh-ed25519 AAAA k\n", "/f": b"x"}))
    summary, ctx = apply(
        root,
        f"""
stages:
  boot:
    - if: '[ -e /nothing ]'
      commands: [touch /x]
      authorized_keys: {{root: ["{base}/k", "github:someone"]}}
      downloads: [{{url: "{base}/f", path: /f}}]
      datasource: {{providers: [aws, cdrom]}}
""",
        dry_run=True,
    )
    assert commands == [] and Hits.count == 0, (commands, Hits.count)
    assert not summary.failed, summary.results
    plan = "\n".join(ctx.plan)
    assert "evaluate if: [ -e /nothing ]" in plan and "run: touch /x" in plan
    assert f"the keys of {base}/k, github:someone" in plan
    assert not (root / "root").exists() and not (root / "f").exists()


def test_authorized_keys_urls_are_downloaded_with_a_limit(
    root: Path, http_files: Callable[[dict[str, bytes]], str]
) -> None:
    base = http_files(
        {
            "/keys": b"ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n",
            "/huge": b"x" * (1024 * 1024 + 1),
        }
    )
    summary, _ = apply(
        root, f"stages:\n  boot:\n    - authorized_keys: {{root: ['{base}/keys']}}\n"
    )
    assert not summary.failed, summary.results
    keys = (root / "root/.ssh/authorized_keys").read_text()
    assert keys == "ssh-ed25519 AAAA one\nssh-ed25519 BBBB two\n"
    summary, _ = apply(
        root, f"stages:\n  boot:\n    - authorized_keys: {{root: ['{base}/huge']}}\n"
    )
    assert summary.failed and "larger than" in summary.results[0].detail
    summary, _ = apply(root, f"stages:\n  boot:\n    - authorized_keys: {{root: ['{base}/404']}}\n")
    assert summary.failed and "cannot fetch" in summary.results[0].detail


def test_entity_user_without_uid_is_refused_or_allocated(root: Path) -> None:
    def ensure(entity: str) -> Summary:
        doc = {"stages": {"boot": [{"ensure_entities": [{"entity": entity}]}]}}
        return apply(root, yaml.safe_dump(doc))[0]

    s = ensure("kind: user\nusername: bob\nhomedir: /home/bob\nshell: /bin/sh\n")
    assert s.failed and "a new user needs uid" in s.results[0].detail
    assert (root / "etc/passwd").read_text() == PASSWD
    s = ensure("kind: user\nusername: bob\nuid: -1\ngroup: users\nhomedir: /h\nshell: /bin/sh\n")
    assert not s.failed, s.results
    assert (root / "etc/passwd").read_text().splitlines()[-1] == "bob::500:100::/h:/bin/sh"
    s = ensure("kind: user\nusername: bob\nshell: /bin/bash\n")  # an update keeps the rest
    assert (root / "etc/passwd").read_text().splitlines()[-1] == "bob::500:100::/h:/bin/bash"


def test_shadow_entity_update_keeps_aging(root: Path) -> None:
    (root / "etc/shadow").write_text("root:*:19000:1:90:14:30:20000:\n")
    doc = {
        "stages": {
            "boot": [
                {
                    "ensure_entities": [
                        {"entity": "kind: shadow\nusername: root\npassword: '$6$new'\n"}
                    ]
                }
            ]
        }
    }
    summary, _ = apply(root, yaml.safe_dump(doc))
    assert not summary.failed, summary.results
    assert (root / "etc/shadow").read_text() == "root:$6$new:19000:1:90:14:30:20000:\n"


# --- property: random steps under --root write nothing outside it ---------------

TRICKY = st.sampled_from(
    [
        "/a",
        "/etc/x",
        "/../x",
        "/../../x",
        "/esc/x",
        "/up/x",
        "/abs/x",
        "/etc/../../x",
        "/esc",
        "/up",
        "/home/u",
        "/etc/passwd",
        "/run/config",
        "/..",
    ]
)
NAMES = st.sampled_from(["u", "x/..", "../u", "..", "/tmp/u", "u\nv", "a:b", "root"])
TEXT = st.sampled_from(["x", "../..", "/esc", "a\nb", "{{ .MachineID }}", "a:b", ""])

STEP = st.fixed_dictionaries(
    {},
    optional={
        "files": st.lists(st.fixed_dictionaries({"path": TRICKY, "content": TEXT}), max_size=2),
        "directories": st.lists(st.fixed_dictionaries({"path": TRICKY}), max_size=2),
        "users": st.dictionaries(
            NAMES,
            st.fixed_dictionaries(
                {},
                optional={
                    "homedir": TRICKY,
                    "gecos": TEXT,
                    "shell": TEXT,
                    "ssh_authorized_keys": st.lists(TEXT, max_size=2),
                },
            ),
            max_size=2,
        ),
        "authorized_keys": st.dictionaries(NAMES, st.lists(TEXT, max_size=2), max_size=2),
        "dns": st.fixed_dictionaries({"nameservers": st.just(["1.1.1.1"]), "path": TRICKY}),
        "environment": st.dictionaries(st.sampled_from(["A", "B"]), TEXT, max_size=2),
        "environment_file": TRICKY,
        "hostname": st.sampled_from(["node", "../x"]),
        "timesyncd": st.dictionaries(st.just("NTP"), TEXT, max_size=1),
        "datasource": st.fixed_dictionaries(
            {"providers": st.just(["file"]), "path": TRICKY, "userdata_name": TEXT}
        ),
        "systemctl": st.fixed_dictionaries(
            {
                "overrides": st.lists(
                    st.fixed_dictionaries(
                        {"service": TEXT, "name": TEXT, "content": st.just("[Service]\n")}
                    ),
                    max_size=1,
                )
            }
        ),
        "systemd_firstboot": st.dictionaries(
            st.sampled_from(["root", "keymap", "image"]), TEXT, max_size=2
        ),
        "if_files": st.fixed_dictionaries({"any": st.lists(TRICKY, max_size=2)}),
        "ensure_entities": st.lists(
            st.builds(
                lambda n, h: {
                    "entity": yaml.safe_dump(
                        {"kind": "user", "username": n, "uid": -1, "gid": 0, "homedir": h}
                    )
                },
                NAMES,
                TRICKY,
            ),
            max_size=1,
        ),
    },
)


def _snapshot(top: Path, root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == root:
            dirnames.clear()
            continue
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p == root:
                continue
            st_ = p.lstat()
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p)] = (st_.st_mode, data)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(STEP, min_size=1, max_size=3))
def test_random_steps_never_write_outside_the_root(
    tmp_path_factory: pytest.TempPathFactory, commands: list[list[str]], steps: list[dict[str, Any]]
) -> None:
    canary = tmp_path_factory.mktemp("canary")
    (canary / "x").write_text("canary")
    (canary / "etc").mkdir()
    (canary / "etc/passwd").write_text("canary")
    root = make_root(canary)
    (root / "esc").symlink_to(canary)  # absolute link to the canary
    (root / "up").symlink_to("../..")  # relative link climbing out
    (root / "abs").symlink_to("/")
    (root / "etc/machine-id").symlink_to(canary / "x")
    before = _snapshot(canary, root)
    already = len(commands)  # the fixture lives across examples
    text = yaml.safe_dump({"stages": {"boot": steps}})
    loaded = load_text(text, "gen.yaml")
    ctx = Context(root=root, values=template_values(root))
    run_stage("boot", loaded.documents, ctx)
    assert _snapshot(canary, root) == before
    for argv in commands[already:]:
        assert argv[0] == "chroot" or argv.count(f"--root={root}") == 1, argv
        opts = argv[: argv.index("--")] if "--" in argv else argv
        assert not any(a.startswith("--root") and a != f"--root={root}" for a in opts), argv


@pytest.mark.parametrize(
    ("provider", "served", "expected"),
    [
        ("azure", b"I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogYXo=", b"#cloud-config\nhostname: az"),
        ("packet", b"#cloud-config\nhostname: em\n", b"#cloud-config\nhostname: em\n"),
        ("vultr", b"#cloud-config\nhostname: vu\n", b"#cloud-config\nhostname: vu\n"),
        ("metaldata", b"#cloud-config\nhostname: md\n", b"#cloud-config\nhostname: md\n"),
        ("scaleway", b"#cloud-config\nhostname: sw\n", b"#cloud-config\nhostname: sw\n"),
    ],
)
def test_metadata_providers_against_a_local_server(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_files: Callable[[dict[str, bytes]], str],
    provider: str,
    served: bytes,
    expected: bytes,
) -> None:
    from cos.cloudinit.plugins import datasource

    base = http_files({"/ud": served})
    _, headers = datasource.ENDPOINTS[provider]
    monkeypatch.setitem(datasource.ENDPOINTS, provider, (f"{base}/ud", headers))
    summary, _ = apply(root, f"stages:\n  boot:\n    - datasource: {{providers: [{provider}]}}\n")
    assert not summary.failed, summary.results
    assert (root / "run/config/userdata.yaml").read_bytes() == expected


def test_vmware_guestinfo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, commands: list[list[str]]
) -> None:
    import base64
    import gzip

    from cos.cloudinit.plugins import datasource

    info = {
        "info-get guestinfo.userdata": base64.b64encode(gzip.compress(b"#cloud-config\n")),
        "info-get guestinfo.userdata.encoding": b"gzip+base64",
    }

    def rpctool(argv: list[str], **kw: Any) -> runner.Result:
        out = info.get(argv[1], b"").decode()
        return runner.Result(tuple(argv), 0 if out else 1, out, "")

    monkeypatch.setattr(runner, "run", rpctool)
    live = Context(root=Path("/"))
    assert datasource.PROVIDERS["vmware"]({}, live) == b"#cloud-config\n"
    assert datasource.PROVIDERS["vmware"]({}, Context(root=tmp_path)) is None  # not under --root
