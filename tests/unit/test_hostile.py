"""Hostile and careless input: one clean error line, nothing the user named is lost."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cos import events
from cos.cli import main
from cos.cli.verbs import VERBS
from cos.errors import ExitCode
from cos.oci.meta import times
from cos.oci.store import TAR_SIZES, LayerStore
from tests.conftest import need
from tests.support.malicious_layers import Layer, oci_layout


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command reads its own config dir, never the host's /etc/cos."""
    conf = tmp_path / "etc-cos"
    conf.mkdir()
    monkeypatch.setenv("COS_CONFIG_DIR", str(conf))
    return conf


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    """The `cos: error:` line of err, asserting it is the only one and not a bug report."""
    lines = [x for x in err.splitlines() if x.startswith("cos: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("cos: error: ") and "internal error" not in err, err
    return lines[0]


# --- pull-image never deletes what the user named ---------------------------------------


def test_failed_pull_keeps_the_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dest = tmp_path / "rootfs"
    dest.mkdir()
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(dest))
    assert rc == ExitCode.IMAGE
    one_error(err)
    assert dest.is_dir()


@pytest.mark.parametrize("name", ["", ".", "..", "sub/.."])
def test_pull_refuses_names_that_are_not_a_new_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    here = tmp_path / "a" / "empty"
    (here / "sub").mkdir(parents=True)
    (here / "sub").rmdir()
    monkeypatch.chdir(here)
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", name)
    assert rc == ExitCode.USAGE
    assert "does not name a new directory" in one_error(err)
    assert here.is_dir() and here.parent.is_dir()


def test_pull_refuses_a_name_too_long(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(tmp_path / ("d" * 300)))
    assert rc == ExitCode.USAGE
    assert "longer than" in one_error(err)


def test_pull_refuses_a_symlink_to_an_empty_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(tmp_path / "link"))
    assert rc == ExitCode.USAGE
    one_error(err)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").is_dir()


def _small_layout(tmp_path: Path) -> str:
    layout, _ = oci_layout(tmp_path, [Layer().dir("etc").file("etc/hello", b"hi\n").bytes()])
    return f"oci:{layout}:latest"


@pytest.mark.root
def test_pull_fills_an_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = _small_layout(tmp_path)
    dest = tmp_path / "rootfs"
    dest.mkdir()
    rc, _, err = run(capsys, "pull-image", image, str(dest))
    assert rc == 0, err
    assert (dest / "etc/hello").read_bytes() == b"hi\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etc-cos", "oci", "rootfs"]


@pytest.mark.root
def test_pull_into_an_empty_mount_point(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    need("mount", "umount", root=True)
    image = _small_layout(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        rc, _, err = run(capsys, "pull-image", f"oci:{tmp_path}/nowhere:x", str(mnt))
        assert rc == ExitCode.IMAGE and os.path.ismount(mnt)
        one_error(err)
        rc, _, err = run(capsys, "pull-image", image, str(mnt))
        assert rc == 0, err
        assert os.path.ismount(mnt) and (mnt / "etc/hello").read_bytes() == b"hi\n"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- --debug shows the traceback every internal error points at -------------------------


def _boom(args: object, cfg: object) -> int:
    raise RuntimeError("boom")


def test_debug_prints_the_traceback_of_an_internal_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(VERBS, "status", replace(VERBS["status"], run=_boom))
    rc, _, err = run(capsys, "status")
    assert rc == ExitCode.BUG and "Traceback" not in err and "--debug" in err
    rc, _, err = run(capsys, "--debug", "status")
    assert rc == ExitCode.BUG
    assert "Traceback (most recent call last)" in err and "in _boom" in err
    assert err.rstrip().endswith("RuntimeError: boom") and "error: traceback" not in err


# --- user:password@ never shows -----------------------------------------------------------

SECRET_REFS = [
    "user:hunter2@example.com/repo:tag",
    "docker://user:hunter2@example.com/repo:tag",
    "user:hunter2@localhost:5000/repo",
    "docker://tok:hunter2@[::1]:5000/repo@sha256:" + "a" * 64,
]


@pytest.mark.parametrize("ref", SECRET_REFS)
@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_credentials_in_a_reference_never_show(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, ref: str, debug: list[str]
) -> None:
    rc, out, err = run(capsys, *debug, "pull-image", "--json", ref, str(tmp_path / "d"))
    assert rc == ExitCode.IMAGE
    assert "cannot carry credentials" in one_error(err)
    assert "hunter2" not in out + err
    start = json.loads(out.splitlines()[0])
    assert start["event"] == "start" and "@" not in start["args"]["image"].split("/")[0]
    for argv in (["inspect", ref], ["sign", ref, "--key", str(tmp_path / "k")]):
        rc, out, err = run(capsys, *debug, *argv)
        assert rc == ExitCode.IMAGE and "hunter2" not in out + err, err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("u:p@ss@h.io/r in (u:p@h.io/r)", "h.io/r in (h.io/r)"),
        ("https://u:p@r.io/v2/", "https://r.io/v2/"),
        ("busybox@sha256:abc docker://busybox@sha256:abc h.io/x@sha256:abc", None),
        ("oci:/tmp/u:p@x/layout:tag and mail@example.com", None),
    ],
)
def test_scrub_takes_credentials_only(text: str, shown: str | None) -> None:
    assert events.scrub(text) == (text if shown is None else shown)


# --- input that used to end in "internal error" ------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("max-snaps: " + "9" * 5000, "invalid YAML"),
        ("max-snaps: " + "9" * 4000, "out of range"),
        ("max-snaps: 9223372036854775808", "out of range"),
        ("a: " + "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("x: " + "{a: " * 3000 + "1" + "}" * 3000, "nested too deeply"),
    ],
)
def test_config_out_of_bounds(
    capsys: pytest.CaptureFixture[str], empty_config: Path, text: str, says: str
) -> None:
    (empty_config / "config.yaml").write_text(text + "\n")
    rc, _, err = run(capsys, "status")
    assert rc == ExitCode.CONFIG
    line = one_error(err)
    assert says in line and len(line) < 200


def test_deep_cloud_init_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("stages: " + "[" * 5000 + "]" * 5000 + "\n")
    out = tmp_path / "d.raw"
    rc, _, err = run(
        capsys, "build-disk", "oci:/nowhere:x", "-o", str(out), "--cloud-init", str(deep)
    )
    assert rc == ExitCode.CONFIG and "nested too deeply" in one_error(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["build-disk", "oci:/nowhere:x", "-o", "{long}/d.raw"],
        ["build-disk", "oci:/nowhere:x", "-o", "{long}"],
        ["generate-key-pair", "--output-key-prefix", "{long}"],
        ["pull-image", "oci:/nowhere:x", "{long}/x"],
    ],
)
def test_a_name_too_long_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "x")
    long = str(tmp_path / ("n" * 300))
    rc, _, err = run(capsys, *(a.replace("{long}", long) for a in argv))
    assert rc in (ExitCode.USAGE, ExitCode.DISK), err
    one_error(err)


def test_generate_key_pair_into_a_missing_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "x")
    rc, _, err = run(capsys, "generate-key-pair", "--output-key-prefix", str(tmp_path / "no/k"))
    assert rc == ExitCode.USAGE and "is not a directory" in one_error(err)
    assert not (tmp_path / "no").exists()


def test_sign_checks_the_key_file_before_the_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    rc, _, err = run(capsys, "sign", "oci:/nowhere:x", "--key", str(tmp_path / "cosign.key"))
    assert rc == ExitCode.IMAGE and "cosign.key" in one_error(err)
    assert "password" not in err


@pytest.mark.parametrize("value", ["banana", "", "ture", "2"])
def test_tls_verify_takes_booleans_only(capsys: pytest.CaptureFixture[str], value: str) -> None:
    rc, _, err = run(capsys, "inspect", f"--tls-verify={value}", "oci:/nowhere:x")
    assert rc == ExitCode.USAGE and "invalid boolean" in one_error(err)


@pytest.mark.parametrize(("value", "verify"), [("TRUE", True), ("off", False), ("0", False)])
def test_tls_verify_spellings(value: str, verify: bool) -> None:
    from cos.cli import build_parser

    assert build_parser().parse_args(["inspect", "--tls-verify", value, "x"]).tls_verify is verify


@pytest.mark.parametrize("odd", ["\n", "\r", "\x1b[31m", "\t"])
def test_control_characters_stay_on_the_error_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, odd: str
) -> None:
    rc, _, err = run(capsys, "inspect", f"oci:{tmp_path}/no{odd}where:x")
    assert rc == ExitCode.IMAGE
    lines = err.splitlines()
    errors = [x for x in lines if x.startswith("cos: ")]
    assert len(errors) == 1 and "where" in errors[0] and "\x1b" not in errors[0]
    assert lines[lines.index(errors[0]) + 1].startswith("hint: ")


@pytest.mark.parametrize(
    "pax",
    [
        {"atime": "1e30"},
        {"atime": "9" * 5000},
        {"atime": "1e999999999"},
        {"mtime": "-1e400"},
        {"mtime": "nan", "atime": "inf"},
    ],
)
def test_absurd_pax_times_fall_back(pax: dict[str, str]) -> None:
    info = tarfile.TarInfo("f")
    info.mtime = 7
    info.pax_headers = pax
    atime, mtime = times(info)
    assert abs(atime) < 2**63 and abs(mtime) < 2**63


@pytest.mark.root
def test_pull_a_layer_with_a_huge_pax_atime(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    layer = Layer().file("f", b"x", pax={"atime": "1" + "0" * 400}).bytes()
    layout, _ = oci_layout(tmp_path, [layer])
    rc, _, err = run(capsys, "pull-image", f"oci:{layout}:latest", str(tmp_path / "root"))
    assert rc == 0, err
    assert (tmp_path / "root/f").read_bytes() == b"x"


# --- layers are sized exactly, incompressible ones too ---------------------------------


def _store_with(tmp_path: Path, layers: list[bytes]) -> tuple[LayerStore, list[str]]:
    store = LayerStore(tmp_path / ".store")
    store.layout.blobs.mkdir(parents=True)
    (store.path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    digests = []
    for data in layers:
        hexd = hashlib.sha256(data).hexdigest()
        (store.layout.blobs / hexd).write_bytes(data)
        digests.append(f"sha256:{hexd}")
    return store, digests


def test_an_incompressible_layer_is_sized_exactly(tmp_path: Path) -> None:
    noise = os.urandom(3 << 20)
    packed = gzip.compress(noise)
    assert len(packed) > len(noise)  # gzip's trailer says less than the blob holds
    zeros = bytes(1 << 20)
    members = gzip.compress(zeros[:1000]) + gzip.compress(zeros)  # the trailer: last member only
    store, (rand, multi, plain) = _store_with(tmp_path, [packed, members, zeros[:4096]])
    assert store.tar_size(rand) == len(noise)
    assert store.tar_size(multi) == 1000 + len(zeros)
    assert store.tar_size(plain) == 4096
    # recorded once; pruned with its blob
    record = store.path / TAR_SIZES / rand.removeprefix("sha256:")
    assert record.read_text() == str(len(noise))
    record.write_text("12345")
    assert store.tar_size(rand) == 12345
    record.write_text("garbage")
    assert store.tar_size(rand) == len(noise)
    store.keep_only(set())
    assert not record.exists()


def test_a_damaged_layer_is_estimated_not_fatal(tmp_path: Path) -> None:
    packed = gzip.compress(os.urandom(1 << 16))
    store, (digest,) = _store_with(tmp_path, [packed[: len(packed) // 2]])
    assert store.tar_size(digest) > 0
    assert not (store.path / TAR_SIZES / digest.removeprefix("sha256:")).exists()


def test_a_double_dash_as_a_value_is_a_missing_value(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse hands a positional an empty list when `--` is its value after `--`."""
    rc, _, err = run(capsys, "pull-image", "--", "--cosign-key", "--")
    assert rc == ExitCode.USAGE and "DIR: expected one value" in one_error(err)


@pytest.mark.parametrize("prefix", ["", ".", "/", ".."])
def test_generate_key_pair_needs_a_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSIGN_PASSWORD", "x")
    rc, _, err = run(capsys, "generate-key-pair", "--output-key-prefix", prefix)
    assert rc == ExitCode.USAGE and "not a file name prefix" in one_error(err)


# --- inspect shows only what the digests vouch for; malformed layouts are clean errors ---

_OS_RELEASE = b'PRETTY_NAME="Good OS"\n'


def _write_layout(
    tmp_path: Path, manifest: dict[str, object] | None = None, config: object = None
) -> tuple[Path, dict[str, object]]:
    """An OCI layout `oci` (tag latest) whose manifest and config may be replaced."""
    layer = Layer().dir("etc").file("etc/os-release", _OS_RELEASE).bytes()
    layout, digest = oci_layout(tmp_path, [layer])
    doc = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    cdesc = doc["config"]
    if config is not None:
        raw = json.dumps(config).encode()
        cdesc = {**cdesc, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(), "size": len(raw)}
        (layout / "blobs/sha256" / cdesc["digest"].split(":")[1]).write_bytes(raw)
        doc["config"] = cdesc
    if manifest is not None:
        doc = {**doc, **manifest}
    raw = json.dumps(doc).encode()
    mdigest = hashlib.sha256(raw).hexdigest()
    (layout / "blobs/sha256" / mdigest).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{mdigest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))
    return layout, doc


def _config(**extra: object) -> dict[str, object]:
    layer = Layer().dir("etc").file("etc/os-release", _OS_RELEASE).bytes()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    return {
        "os": "linux",
        "architecture": "amd64",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        **extra,
    }


def test_inspect_reads_a_good_layout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layout, _ = _write_layout(tmp_path, config=_config(config={"Labels": {"a": "b"}}))
    rc, out, err = run(capsys, "inspect", f"oci:{layout}:latest")
    assert rc == 0, err
    assert "OS:       Good OS" in out and "Label:    a=b" in out


@pytest.mark.parametrize("what", ["config", "layer"])
def test_inspect_refuses_a_tampered_blob_before_printing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str
) -> None:
    layout, doc = _write_layout(tmp_path, config=_config(config={"Labels": {"a": "b"}}))
    desc: Any = doc["config"] if what == "config" else doc["layers"][0]  # type: ignore[index]
    blob = layout / "blobs/sha256" / desc["digest"].split(":")[1]
    if what == "config":
        blob.write_text(json.dumps(_config(config={"Labels": {"a": "evil"}})))
    else:
        evil = Layer().dir("etc").file("etc/os-release", b'PRETTY_NAME="Evil"\n').bytes()
        blob.write_bytes(gzip.compress(evil))
    rc, out, err = run(capsys, "inspect", f"oci:{layout}:latest")
    assert rc == ExitCode.IMAGE and out == ""
    line = one_error(err)
    assert "does not match its digest" in line or "descriptor says" in line, line


@pytest.mark.parametrize(
    ("manifest", "config"),
    [
        ({"config": None}, None),
        ({"config": {"digest": "sha256:zz", "size": 2}}, None),
        ({"config": {"digest": None}}, None),
        ({"layers": "all"}, None),
        ({"layers": [{"digest": 5, "size": "x"}]}, None),
        ({"layers": []}, None),
        ({"schemaVersion": 1}, None),
        ({"mediaType": "text/plain"}, None),
        (None, _config(config="labels")),
        (None, _config(config={"Labels": ["a", "b"]})),
        (None, _config(config={"Labels": {"k": {"nested": [1, 2]}}})),
        (None, _config(os=["linux"], architecture={"x": 1}, created=5)),
        (None, _config(rootfs="layers")),
        (None, [1, 2, 3]),
    ],
)
def test_inspect_malformed_documents(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    manifest: dict[str, object] | None,
    config: object,
) -> None:
    layout, _ = _write_layout(tmp_path, manifest, config)
    rc, _, err = run(capsys, "inspect", f"oci:{layout}:latest")
    assert rc in (0, ExitCode.IMAGE), err
    if rc:
        one_error(err)


@pytest.mark.parametrize(
    "layer",
    [
        b"not a tar at all" * 100,
        gzip.compress(b"\x00" * 512 + b"junk")[:-10],
        Layer().raw(tarfile.TarInfo("x")).bytes(),
    ],
)
def test_inspect_malformed_layers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, layer: bytes
) -> None:
    layout, _ = oci_layout(tmp_path, [layer], gz=False)
    rc, _, err = run(capsys, "inspect", f"oci:{layout}:latest")
    assert rc in (0, ExitCode.IMAGE), err
    if rc:
        one_error(err)


def test_inspect_bounds_tar_headers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A PAX header of 16 MiB (a few KB gzipped) is refused, not read into memory."""
    header = tarfile.TarInfo("big")
    header.pax_headers = {"comment": "x" * (16 << 20)}
    layer = Layer()
    layer.raw(header, tarfile.PAX_FORMAT)
    layout, _ = oci_layout(tmp_path, [layer.bytes()])
    rc, _, err = run(capsys, "inspect", f"oci:{layout}:latest")
    assert rc == ExitCode.IMAGE and "extended header" in one_error(err)
