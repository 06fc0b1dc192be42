from __future__ import annotations

from pathlib import Path

import pytest

from cos.config import SnapshotterKind, load_config
from cos.errors import ConfigError


def _cfg(tmp_path: Path, main: str | None = None, **dropins: str) -> Path:
    if main is not None:
        (tmp_path / "config.yaml").write_text(main)
    if dropins:
        (tmp_path / "config.d").mkdir()
        for name, text in dropins.items():
            (tmp_path / "config.d" / f"{name}.yaml").write_text(text)
    return tmp_path


def test_defaults_without_files(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={})
    assert cfg.kept_snapshots(SnapshotterKind.LOOP) == 2 and cfg.partitions.state == 8192
    assert cfg.kept_snapshots(SnapshotterKind.LAYERS) == 4
    assert cfg.layout.ephemeral == ["/etc", "/var", "/srv"]
    assert "/var/log" in cfg.layout.persistent


def test_order_file_dropins_env_flags(tmp_path: Path) -> None:
    d = _cfg(
        tmp_path,
        "max-snaps: 3\npartitions: {state: 4096}\n",
        a="max-snaps: 4\n",
        b="partitions:\n  recovery: 1024\n",
    )
    cfg = load_config(d, env={})
    assert cfg.max_snaps == 4 and cfg.partitions.state == 4096 and cfg.partitions.recovery == 1024
    cfg = load_config(d, env={"COS_MAX_SNAPS": "5", "COS_PARTITIONS__STATE": "2048"})
    assert cfg.max_snaps == 5 and cfg.partitions.state == 2048
    cfg = load_config(d, env={"COS_MAX_SNAPS": "5"}, flags={"max-snaps": 6})
    assert cfg.max_snaps == 6


def test_env_lists_and_bools(tmp_path: Path) -> None:
    cfg = load_config(
        tmp_path, env={"COS_LAYOUT__EPHEMERAL": "/etc,/var /srv/x", "COS_TLS_VERIFY": "false"}
    )
    assert cfg.layout.ephemeral == ["/etc", "/var", "/srv/x"] and cfg.tls_verify is False


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max-snap: 3\n", r"config.yaml: unknown key 'max-snap'.*"),
        ("max-snaps: many\n", r"max-snaps: expected an integer"),
        ("max-snaps: -1\n", r"max-snaps must be ≥ 1, or 0"),
        ("layout: {ephemeral: [etc]}\n", r"must be an absolute path"),
        ("partitions: {state: 1}\n", r"partitions.state = 1 MiB is too small"),
        ("a: [\n", r"config.yaml:2:1: invalid YAML"),
        ("- 1\n", r"expected a mapping"),
    ],
)
def test_invalid_config_names_the_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_cfg(tmp_path, text), env={})


def test_unknown_key_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(_cfg(tmp_path, "max-snap: 3\n"), env={})
    assert "max-snaps" in exc.value.hint


def test_bad_env_is_reported_as_env(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"environment \(COS_\*\)"):
        load_config(tmp_path, env={"COS_MAX_SNAPS": "x"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("labels: {state: 'COS STATE'}\n", "labels.state 'COS STATE' is not a valid"),
        ("labels: {efi: COS_GRUB_TOO_LONG}\n", "labels.efi"),
        ("labels: {oem: ABCDEFGHIJKLMNOPQ}\n", "labels.oem"),
        ("partitions: {efi: 20}\n", "too small for a FAT32 ESP"),
    ],
)
def test_labels_and_esp_size_are_checked(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_cfg(tmp_path, text), env={})


def test_unrelated_cos_variables_are_ignored(tmp_path: Path) -> None:
    cfg = load_config(tmp_path, env={"COS_SECRET_ID": "x", "COS_REGION": "y", "COS_MAX_SNAPS": "3"})
    assert cfg.max_snaps == 3


def test_conflicting_env_is_an_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="conflicts"):
        load_config(tmp_path, env={"COS_PARTITIONS": "x", "COS_PARTITIONS__STATE": "1"})


def test_non_utf8_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_bytes(b"max-snaps: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path, env={})
