from __future__ import annotations

import os
from pathlib import Path

import pytest

from cos.cloudinit.loader import (
    MAX_FILE_BYTES,
    is_cloud_config,
    load_cmdline,
    load_source,
    load_text,
    parse_dot_notation,
)


def test_yip_document_loads_with_stages() -> None:
    r = load_text("name: x\nstages:\n  boot:\n    - commands: [echo hi]\n", "a.yaml")
    assert not r.errors
    assert r.documents[0].name == "x" and r.documents[0].stages["boot"][0]["commands"] == [
        "echo hi"
    ]


def test_errors_carry_file_line_column_and_key_path() -> None:
    text = "stages:\n  boot:\n    - name: a\n      comands: [x]\n"
    r = load_text(text, "b.yaml", strict=True)
    assert not r.documents
    (e,) = r.errors
    assert str(e).startswith("b.yaml:4:7: stages.boot[0].comands: unknown key in step")
    assert "did you mean 'commands'?" in str(e)


def test_unknown_key_is_a_located_warning_and_the_rest_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = (
        "stages:\n  boot:\n    - name: a\n      files:\n        - path: /x\n"
        "          permsisions: 0600\n      commands: [y]\n"
    )
    r = load_text(text, "k.yaml")
    assert not r.errors
    (step,) = r.documents[0].stages["boot"]
    assert step["commands"] == ["y"] and step["files"] == [{"path": "/x"}]
    (w,) = r.warnings
    assert str(w).startswith("k.yaml:6:11: stages.boot[0].files[0].permsisions: unknown key")
    assert "did you mean 'permissions'?" in str(w) and str(w) in caplog.text


def test_wrong_type_still_refuses_the_document() -> None:
    r = load_text("stages:\n  boot:\n    - commands: {a: b}\n", "t.yaml")
    assert not r.documents and "expected a list" in str(r.errors[0])


def test_kairos_install_keys_are_warnings() -> None:
    text = "#cloud-config\ninstall:\n  auto: true\n  device: /dev/vda\n  grub_options: {a: b}\n"
    r = load_text(text, "k.yaml")
    assert not r.errors and r.documents[0].install == {"auto": True, "device": "/dev/vda"}
    (w,) = r.warnings
    assert "k.yaml:5:3: install.grub_options" in str(w) and "Kairos" in str(w)
    assert load_text(text, "k.yaml", strict=True).errors


def test_octal_forms_and_quoted_mode() -> None:
    r = load_text(
        "stages:\n  s:\n    - files:\n      - {path: /a, permissions: 0o755}\n"
        "      - {path: /b, permissions: 0644}\n",
        "c.yaml",
    )
    files = r.documents[0].stages["s"][0]["files"]
    assert [f["permissions"] for f in files] == [0o755, 0o644]
    bad = load_text("stages:\n  s:\n    - files:\n      - {path: /a, permissions: '0644'}\n", "d")
    assert "expected an integer" in str(bad.errors[0]) and "d:4:" in str(bad.errors[0])


def test_cloud_config_header_detection() -> None:
    assert is_cloud_config("\n# comment\n#cloud-config\nusers: []\n")
    assert not is_cloud_config("users: []\n#cloud-config\n")


def test_cloud_config_is_transpiled_like_yip() -> None:
    text = """#cloud-config
hostname: node1
ssh_authorized_keys: ["ssh-rsa GLOBAL"]
users:
  - name: bob
    passwd: "$6$x"
    ssh_authorized_keys: ["ssh-rsa BOB", "github:bob"]
write_files:
  - path: /etc/x
    permissions: "0600"
    owner: bob:bob
    content: hi
runcmd: ["echo a"]
growpart:
  devices: ["/"]
"""
    r = load_text(text, "cc.yaml")
    assert not r.errors, r.errors
    st = r.documents[0].stages
    boot = st["boot"][0]
    assert boot["users"]["bob"]["passwd"] == "$6$x"
    assert boot["authorized_keys"] == {"bob": ["ssh-rsa BOB", "ssh-rsa GLOBAL"]}
    assert boot["files"][0] == {
        "path": "/etc/x",
        "content": "hi",
        "ownerstring": "bob:bob",
        "permissions": 0o600,
    }
    assert boot["commands"] == ["echo a"]
    assert st["boot"][1]["layout"]["device"]["path"] == "/"
    assert st["initramfs"] == [{"hostname": "node1"}]
    assert st["network"] == [{"authorized_keys": {"bob": ["github:bob"]}}]


def test_foreign_cloud_config_keys_are_reported_and_the_rest_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Kairos and Elemental keep their own settings beside the cloud-config keys.
    r = load_text("#cloud-config\np2p: {network_token: x}\nruncmd: [y]\n", "u.yaml")
    assert not r.errors and r.documents[0].stages["boot"][0]["commands"] == ["y"]
    assert "u.yaml:2:1: p2p: cloud-config key not used by cos" in caplog.text


def test_install_section_is_kept_for_live_media() -> None:
    text = "#cloud-config\ninstall:\n  device: /dev/vda\n  reboot: true\n  cloud-init: [/a.yaml]\n"
    (doc,) = load_text(text, "i.yaml").documents
    assert doc.install == {"device": "/dev/vda", "reboot": True, "cloud-init": ["/a.yaml"]}
    (doc,) = load_text("install: {device: /dev/sda, poweroff: true}\n", "y.yaml").documents
    assert doc.install == {"device": "/dev/sda", "poweroff": True}
    bad = load_text("install: {device: /dev/sda, reboot: sometimes}\n", "b.yaml")
    assert bad.errors and not bad.documents


def test_malformed_cloud_config_values_are_errors_not_crashes() -> None:
    for text in (
        "ssh_authorized_keys: 5\n",
        "users: [{name: a, ssh_authorized_keys: true}]\n",
        "growpart: {devices: 5}\n",
    ):
        r = load_text("#cloud-config\n" + text, "m.yaml")
        assert r.errors and not r.documents, text
    r = load_text("#cloud-config\nssh_authorized_keys: ssh-rsa ONE\n", "s.yaml")
    assert r.documents[0].stages["boot"][0]["authorized_keys"] == {"root": ["ssh-rsa ONE"]}


def test_huge_cmdline_index_is_ignored() -> None:
    assert parse_dot_notation("stages.boot[9999999].commands[0]=x") == {"stages": {"boot": []}}


def test_dot_notation() -> None:
    cmd = (
        'console=ttyS0 stages.boot[0].commands[0]="echo hi there" stages.boot[0].name=x '
        "rd.neednet=1 cos-img/filename=/x stages.boot[2].hostname=h"
    )
    assert parse_dot_notation(cmd) == {
        "stages": {"boot": [{"commands": ["echo hi there"], "name": "x"}, None, {"hostname": "h"}]}
    }
    r = load_cmdline(cmd)
    assert not r.errors and len(r.documents[0].stages["boot"]) == 2


def test_directory_lexical_and_broken_file_does_not_stop_others(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "20.yaml").write_text("stages: {boot: [{name: b}]}\n")
    (tmp_path / "10.yml").write_text("stages: {boot: [{name: a}]}\n")
    (tmp_path / "sub/30.yaml").write_text("stages: {boot: [{name: c}]}\n")
    (tmp_path / "15.yaml").write_text("stages: {boot: [\n")
    (tmp_path / "notes.txt").write_text("ignored")
    r = load_source(str(tmp_path))
    assert [d.stages["boot"][0]["name"] for d in r.documents] == ["a", "b", "c"]
    assert len(r.errors) == 1 and "15.yaml:2:1" in str(r.errors[0])


def test_missing_path_is_an_error_not_yaml() -> None:
    r = load_source("/nonexistent/cos.yaml")
    assert not r.documents and "no such file" in str(r.errors[0])


def _bad_files(d: Path) -> None:
    (d / "01-bigint.yaml").write_text(
        "stages:\n  boot:\n    - files: [{path: /a, owner: " + "9" * 5000 + "}]\n"
    )
    (d / "02-deep.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "03-alias.yaml").write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
    )
    (d / "04-big.yaml").write_text("name: " + "x" * (MAX_FILE_BYTES + 1) + "\n")
    os.mkfifo(d / "05-fifo.yaml")
    (d / "06-binary.yaml").write_bytes(b"\xff\xfe\x00")


def test_one_bad_file_never_drops_the_others(tmp_path: Path) -> None:
    d = tmp_path / "oem"
    d.mkdir()
    _bad_files(d)
    (d / "99-good.yaml").write_text("stages:\n  boot:\n    - commands: [x]\n")
    r = load_source(str(d))  # a FIFO must not hang this
    assert [doc.source for doc in r.documents] == [str(d / "99-good.yaml")]
    where = sorted(str(e.mark).rsplit("/", 1)[-1] for e in r.errors)
    assert where == [
        "01-bigint.yaml:3:33",
        "02-deep.yaml:1:70",
        "03-alias.yaml:1:17",
        "04-big.yaml:1:1",
        "06-binary.yaml:1:1",
    ], r.errors
    (w,) = r.warnings
    assert "05-fifo.yaml" in str(w) and "not a regular file" in str(w)
