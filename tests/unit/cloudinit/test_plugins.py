"""Plugins against a temporary target root (--root): nothing outside it changes."""

from __future__ import annotations

import base64
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cos.cloudinit.loader import load_text
from cos.cloudinit.plugins.base import Context
from cos.cloudinit.plugins.users import hash_password
from cos.cloudinit.runner import run_stage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/group").write_text("root:x:0:\nsudo:x:27:\nusers:x:100:\n")
    (r / "etc/hosts").write_text("127.0.0.1 localhost\n::1 ip6-localhost\n")
    (r / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_ID="12"\n'
    )
    return r


def run(root: Path, text: str, stage: str = "boot", dry_run: bool = False):  # type: ignore[no-untyped-def]
    loaded = load_text(text, "t.yaml")
    assert not loaded.errors, loaded.errors
    ctx = Context(root=root, dry_run=dry_run, values={"Values": {"os": {"name": "Debian"}}})
    return run_stage(stage, loaded.documents, ctx), ctx


@pytest.mark.root
def test_files_modes_owners_encodings_templates(root: Path) -> None:
    gz = base64.b64encode(gzip.compress(b"zipped\n")).decode()
    summary, _ = run(
        root,
        f"""
stages:
  boot:
    - files:
        - path: /etc/a/b/plain
          permissions: 0640
          owner: 1000
          group: 100
          content: "x {{{{ .Values.os.name }}}}"
        - path: /etc/b64
          permissions: 0600
          encoding: b64
          content: "{base64.b64encode(b"raw").decode()}"
        - {{path: /etc/gz, permissions: 0644, encoding: gz+b64, content: "{gz}"}}
""",
    )
    assert summary.count("ran") == 1, summary
    p = root / "etc/a/b/plain"
    assert p.read_text() == "x Debian"
    st = p.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 1000, 100)
    assert (root / "etc/a").stat().st_mode & 0o777 == 0o740  # parents: mode + x for owner
    assert (root / "etc/b64").read_bytes() == b"raw"
    assert (root / "etc/gz").read_text() == "zipped\n"


@pytest.mark.root
def test_paths_cannot_leave_the_root(root: Path, tmp_path: Path) -> None:
    summary, _ = run(root, "stages:\n  boot:\n    - files: [{path: /../../escape, content: x}]\n")
    assert summary.count("ran") == 1
    assert not (tmp_path / "escape").exists() and (root / "escape").exists()


@pytest.mark.root
def test_users_keys_groups_and_passwords(root: Path) -> None:
    summary, _ = run(
        root,
        """
stages:
  boot:
    - users:
        alice:
          passwd: secret
          groups: [sudo, nosuchgroup]
          shell: /bin/bash
          ssh_authorized_keys: ["ssh-ed25519 AAAA alice"]
        svc:
          system: true
          no_create_home: true
          lock_passwd: true
        root:
          passwd: "$6$abc$hash"
      authorized_keys:
        root: ["ssh-ed25519 BBBB root"]
""",
    )
    assert summary.count("ran") == 1, summary.results
    passwd = (root / "etc/passwd").read_text()
    assert "alice:x:1000:1000::/home/alice:/bin/bash" in passwd
    assert "svc:x:100:" in passwd.replace("svc:x:100:101", "svc:x:100:")
    shadow = {
        line.split(":")[0]: line.split(":")[1]
        for line in (root / "etc/shadow").read_text().splitlines()
    }
    assert shadow["alice"].startswith("$6$") and "secret" not in shadow["alice"]
    assert shadow["svc"] == "!" and shadow["root"] == "$6$abc$hash"
    assert "sudo:x:27:alice" in (root / "etc/group").read_text()
    ak = root / "home/alice/.ssh/authorized_keys"
    assert ak.read_text() == "ssh-ed25519 AAAA alice\n"
    assert (ak.stat().st_mode & 0o777, ak.stat().st_uid) == (0o600, 1000)
    assert (root / "home/alice/.ssh").stat().st_mode & 0o777 == 0o700
    assert "ssh-ed25519 BBBB root" in (root / "root/.ssh/authorized_keys").read_text()
    assert not (root / "home/svc").exists()


@pytest.mark.root
def test_keys_are_not_duplicated(root: Path) -> None:
    doc = "stages:\n  boot:\n    - authorized_keys: {root: ['ssh-ed25519 K1']}\n"
    run(root, doc)
    run(root, doc)
    assert (root / "root/.ssh/authorized_keys").read_text() == "ssh-ed25519 K1\n"


def test_hostname_environment_dns_timesyncd_overrides(root: Path) -> None:
    summary, _ = run(
        root,
        """
stages:
  boot:
    - hostname: node-7
      environment: {A: "1", B: "two words"}
      dns: {nameservers: [10.0.0.1], search: [lan]}
      timesyncd: {NTP: pool.example}
      systemctl:
        overrides:
          - {service: foo, content: "[Service]\\nRestart=always\\n"}
""",
    )
    assert summary.count("ran") == 1, summary.results
    assert (root / "etc/hostname").read_text() == "node-7\n"
    assert (root / "etc/hosts").read_text() == "127.0.0.1 localhost node-7\n::1 ip6-localhost\n"
    assert (root / "etc/environment").read_text() == 'A="1"\nB="two words"\n'
    assert (root / "etc/resolv.conf").read_text() == "search lan\nnameserver 10.0.0.1\n"
    assert "NTP=pool.example" in (root / "etc/systemd/timesyncd.conf.d/10-yip.conf").read_text()
    assert (
        (root / "etc/systemd/system/foo.service.d/override-yip.conf")
        .read_text()
        .startswith("[Service]")
    )


def test_dry_run_changes_nothing(root: Path) -> None:
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    _, ctx = run(
        root,
        "stages:\n  boot:\n    - files: [{path: /x, content: y}]\n"
        "      hostname: h\n      users: {bob: {}}\n",
        dry_run=True,
    )
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after
    assert any("write /x" in line for line in ctx.plan) and any(
        "create user bob" in line for line in ctx.plan
    )


def test_live_only_plugins_refuse_a_root_target(root: Path) -> None:
    summary, _ = run(root, "stages:\n  boot:\n    - sysctl: {vm.swappiness: '10'}\n")
    assert summary.count("failed") == 1
    assert "only applies to the running system" in summary.results[0].detail


def test_unimplemented_plugins_say_so(root: Path) -> None:
    summary, _ = run(root, "stages:\n  boot:\n    - packages: {install: [vim]}\n")
    assert "not supported by this version" in summary.results[0].detail


def test_hash_password() -> None:
    h = hash_password("pw")
    assert h.startswith("$6$") and h != hash_password("pw")
    assert os.environ.get("COS_TEST_SECRET") is None


def test_entities_ensure_and_delete(root: Path) -> None:
    summary, _ = run(
        root,
        """
stages:
  boot:
    - ensure_entities:
        - entity: |
            kind: user
            username: svc
            password: x
            uid: 990
            gid: 990
            info: service
            homedir: /srv/svc
            shell: /usr/sbin/nologin
        - entity: |
            kind: group
            group_name: svc
            password: x
            gid: 990
            users: svc
        - entity: |
            kind: shadow
            username: svc
            password: "!"
            last_changed: now
    - delete_entities:
        - entity: |
            kind: group
            group_name: users
""",
    )
    assert summary.count("ran") == 2, summary.results
    assert "svc:x:990:990:service:/srv/svc:/usr/sbin/nologin" in (root / "etc/passwd").read_text()
    group = (root / "etc/group").read_text()
    assert "svc:x:990:svc" in group and "users:" not in group
    assert (root / "etc/shadow").read_text().splitlines()[-1].startswith("svc:!:")


def test_entity_without_kind_is_an_error(root: Path) -> None:
    summary, _ = run(root, "stages:\n  boot:\n    - ensure_entities: [{entity: 'a: b'}]\n")
    assert summary.failed and "kind" in summary.results[0].detail


def test_datasource_file_and_metadata_service(
    root: Path, monkeypatch: pytest.MonkeyPatch, http_files: Callable[[dict[str, bytes]], str]
) -> None:
    from cos.cloudinit.plugins import datasource

    (root / "seed.yaml").write_text("#cloud-config\nhostname: from-file\n")
    summary, _ = run(
        root, "stages:\n  boot:\n    - datasource: {providers: [file], path: /seed.yaml}\n"
    )
    assert summary.count("ran") == 1, summary.results
    assert "from-file" in (root / "run/config/userdata.yaml").read_text()

    base = http_files({"/latest/user-data": b"#cloud-config\nhostname: from-metadata\n"})
    monkeypatch.setitem(datasource.ENDPOINTS, "aws", (f"{base}/latest/user-data", {}))
    monkeypatch.setitem(datasource.ENDPOINTS, "hetzner", (f"{base}/nothing", {}))
    summary, _ = run(
        root,
        "stages:\n  boot:\n    - datasource:\n        providers: [hetzner, aws]\n"
        "        path: /run/ud\n",
    )
    assert summary.count("ran") == 1, summary.results
    assert "from-metadata" in (root / "run/ud/userdata.yaml").read_text()


def test_datasource_without_data_fails(root: Path) -> None:
    summary, _ = run(root, "stages:\n  boot:\n    - datasource: {providers: [file], path: /none}\n")
    assert summary.failed and "no user-data" in summary.results[0].detail


@pytest.mark.root
def test_downloads_from_a_local_server(
    root: Path, http_files: Callable[[dict[str, bytes]], str]
) -> None:
    base = http_files({"/tool": b"#!/bin/sh\necho tool\n"})
    summary, _ = run(
        root,
        f"""
stages:
  boot:
    - downloads:
        - {{url: "{base}/tool", path: /usr/local/bin/tool, permissions: 0755}}
        - {{url: "{base}/missing", path: /tmp/missing}}
""",
    )
    tool = root / "usr/local/bin/tool"
    assert tool.read_text().endswith("echo tool\n") and tool.stat().st_mode & 0o777 == 0o755
    assert summary.failed and "missing" in summary.results[0].detail
    assert not (root / "tmp/missing").exists()


@pytest.mark.root
def test_symlinks_in_the_target_cannot_lead_outside(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host-run"
    outside.mkdir()
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run")  # absolute: means <root>/run, not the host's
    (root / "etc/evil").symlink_to(str(outside))
    summary, _ = run(
        root,
        """
stages:
  boot:
    - files:
        - {path: /var/run/marker, permissions: 0644, content: x}
        - {path: /etc/evil/marker, permissions: 0644, content: x}
      directories:
        - {path: /var/run/dir, permissions: 0700}
""",
    )
    assert summary.count("ran") == 1, summary.results
    assert (root / "run/marker").is_file() and (root / "run/dir").is_dir()
    assert not Path("/run/marker").exists() and not Path("/run/dir").exists()
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "marker").is_file()


def test_shadow_entity_password_is_hashed_and_groups_merge(root: Path) -> None:
    summary, _ = run(
        root,
        """
stages:
  boot:
    - ensure_entities:
        - entity: |
            kind: shadow
            username: root
            password: plain-secret
        - entity: |
            kind: group
            group_name: sudo
            users: alice
    - ensure_entities:
        - entity: |
            kind: group
            group_name: sudo
            users: bob
""",
    )
    assert summary.count("ran") == 2, summary.results
    shadow = (root / "etc/shadow").read_text()
    assert "plain-secret" not in shadow and shadow.startswith("root:$6$")
    assert "sudo:x:27:alice,bob" in (root / "etc/group").read_text()


def test_environment_round_trips_spaces_and_quotes(root: Path) -> None:
    (root / "etc/environment").write_text("EXISTING=hello world\n")
    run(root, "stages:\n  boot:\n    - environment: {Q: 'say \"hi\" $HOME'}\n")
    run(root, "stages:\n  boot:\n    - environment: {R: '1'}\n")
    from cos.cloudinit.plugins.system import _parse_dotenv

    env = _parse_dotenv((root / "etc/environment").read_text())
    assert env == {"EXISTING": "hello world", "Q": 'say "hi" $HOME', "R": "1"}


@pytest.mark.root
def test_unsupported_template_is_used_as_written(root: Path) -> None:
    summary, _ = run(
        root,
        "stages:\n  boot:\n    - files:\n"
        "        - {path: /etc/t, content: '{{ $labels.instance }}'}\n",
    )
    assert summary.count("ran") == 1
    assert (root / "etc/t").read_text() == "{{ $labels.instance }}"


def test_scalars_in_string_fields_and_empty_values(root: Path) -> None:
    summary, _ = run(
        root,
        "stages:\n  boot:\n    - environment: {DEBUG: true, N: 5}\n"
        "      hostname: ''\n      datasource: {providers: []}\n",
    )
    assert summary.count("ran") == 1, summary.results
    assert 'DEBUG="true"' in (root / "etc/environment").read_text()
    assert not (root / "etc/hostname").exists()
