"""registries.conf and credential helpers against real registries on 127.0.0.1.

An origin and a mirror (a second registry whose copy lives under another namespace,
as a pull-through cache keeps it); a dead mirror (a free port nobody listens on)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from cos.oci import cosign
from tests.conftest import need
from tests.support.cli import cos, push, refused, tiny_layout
from tests.support.registry import free_port, registry

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"


def _requests(log: Path, since: int = 0) -> list[str]:
    """The request lines ("GET /v2/…") a registry logged after byte offset since."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if '"GET /v2/' in line]


def _conf(path: Path, origin: str, mirrors: list[str], extra: str = "") -> dict[str, str]:
    text = f'[[registry]]\nlocation = "{origin}"\ninsecure = true\n{extra}'
    for m in mirrors:
        text += f'\n[[registry.mirror]]\nlocation = "{m}"\ninsecure = true\n'
    path.write_text(text)
    return {"CONTAINERS_REGISTRIES_CONF": str(path)}


def test_mirrors_fallback_and_blocked(tmp_path: Path, cache_env: Path) -> None:
    need("docker-registry", "skopeo", "umoci")
    layout = tmp_path / "oci"
    tiny_layout(layout, "m", {"f": "mirrored\n"})
    key = DATA / "cosign-empty-password.key"
    pub = tmp_path / "cosign.pub"
    pub.write_bytes(cosign.public_pem(cosign.load_private_key(key, b"")))
    dead = f"127.0.0.1:{free_port()}"
    with registry(tmp_path / "mirror") as mirror:
        origin_cm = registry(tmp_path / "origin")
        origin = origin_cm.__enter__()
        try:
            ref = f"{origin}/fleet/os:1"
            digest = push(layout, "m", ref)
            cos("sign", "--key", str(key), "--tls-verify=false", ref, env={"COSIGN_PASSWORD": ""})
            # The mirror's copy, signature included, under its own namespace.
            sig = cosign.sig_tag(digest)
            for tag in ("1", sig):
                subprocess.run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--preserve-digests",
                        "--src-tls-verify=false",
                        "--dest-tls-verify=false",
                        f"docker://{origin}/fleet/os:{tag}",
                        f"docker://{mirror}/cache/fleet/os:{tag}",
                    ],
                    check=True,
                )
            conf = tmp_path / "registries.conf"
            env = _conf(conf, origin, [dead, f"{mirror}/cache"])
            origin_log, mirror_log = (
                tmp_path / "origin/registry.log",
                tmp_path / "mirror/registry.log",
            )
            mark = origin_log.stat().st_size, mirror_log.stat().st_size

            # insecure = true stands for --tls-verify=false; the dead mirror is skipped
            # once, the mirror serves manifest, blobs and the signature.
            r = cos(
                "pull-image",
                "--cosign-key",
                str(pub),
                ref,
                str(tmp_path / "t1"),
                env={**env, "COS_CACHE_DIR": str(tmp_path / "c1")},
            )
            assert (tmp_path / "t1/f").read_text() == "mirrored\n"
            assert r.stderr.count(f"warning: mirror {dead}:") == 1, r.stderr
            assert f"through mirror {mirror}/cache/fleet/os" in r.stderr
            assert _requests(origin_log, mark[0]) == []
            served = " ".join(_requests(mirror_log, mark[1]))
            assert "/v2/cache/fleet/os/manifests/1" in served
            assert f"/v2/cache/fleet/os/manifests/{sig}" in served
            assert "/blobs/" in served

            # A mirror without the image (404) hands over to the registry.
            _conf(conf, origin, [f"{mirror}/empty"])
            r = cos(
                "inspect",
                ref,
                env={**env, "COS_CACHE_DIR": str(tmp_path / "c2")},
            )
            assert f"warning: mirror {mirror}:" in r.stderr and "manifest unknown" in r.stderr
            assert digest in r.stdout

            # blocked = true: refused before anything is read or written.
            _conf(conf, origin, [f"{mirror}/cache"], "blocked = true\n")
            r = cos("pull-image", ref, str(tmp_path / "t3"), env=env, check=False)
            refused(r, 3, f"registry {origin} is blocked in {conf}")
            assert not (tmp_path / "t3").exists()

            conf.write_text('[[registry]]\nlocation = "x"\nblocked = "yes"\n')
            r = cos("pull-image", ref, str(tmp_path / "t3"), env=env, check=False)
            refused(r, 3, f"{conf}: registry[0]: blocked must be true or false")
        finally:
            origin_cm.__exit__(None, None, None)

        # The registry is gone: the mirror alone serves the image and its signature.
        _conf(conf, origin, [dead, f"{mirror}/cache"])
        r = cos(
            "pull-image",
            "--cosign-key",
            str(pub),
            ref,
            str(tmp_path / "t4"),
            env={**env, "COS_CACHE_DIR": str(tmp_path / "c4")},
        )
        assert (tmp_path / "t4/f").read_text() == "mirrored\n"

    # Mirror and registry down: the registry's own error, one line.
    r = cos("pull-image", ref, str(tmp_path / "t5"), env=env, check=False)
    refused(r, 4, f"registry {origin} is not reachable")


def test_credential_helper_for_a_registry_behind_a_login(
    tmp_path: Path, cache_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("docker-registry", "skopeo", "umoci")
    secret = "h3lper-pa55"
    layout = tmp_path / "oci"
    tiny_layout(layout, "a", {"f": "behind a helper\n"})
    bin_dir, docker = tmp_path / "bin", tmp_path / "docker"
    bin_dir.mkdir()
    docker.mkdir()
    calls = tmp_path / "calls"
    helper = bin_dir / "docker-credential-fleet"
    helper.write_text(
        "#!/bin/sh\n"
        f'read -r server; echo "$* <$server>" >> {calls}\n'
        f'printf \'{{"ServerURL":"%s","Username":"robot","Secret":"{secret}"}}\' "$server"\n'
    )
    helper.chmod(0o755)
    (bin_dir / "docker-credential-locked").write_text("#!/bin/sh\necho locked >&2; exit 2\n")
    (bin_dir / "docker-credential-locked").chmod(0o755)
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_CONFIG": str(docker)}
    with registry(tmp_path / "reg", users={"robot": secret}) as host:
        auth = tmp_path / "push-auth.json"
        token = base64.b64encode(f"robot:{secret}".encode()).decode()
        auth.write_text(json.dumps({"auths": {host: {"auth": token}}}))
        ref = f"{host}/private/a:1"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-authfile",
                str(auth),
                f"oci:{layout}:a",
                f"docker://{ref}",
            ],
            check=True,
        )
        for i, doc in enumerate([{"credHelpers": {host: "fleet"}}, {"credsStore": "fleet"}]):
            (docker / "config.json").write_text(json.dumps(doc))
            dest = tmp_path / f"t{i}"
            r = cos("--debug", "pull-image", "--tls-verify=false", ref, str(dest), env=env)
            assert (dest / "f").read_text() == "behind a helper\n"
            assert secret not in r.stdout + r.stderr and token not in r.stdout + r.stderr
            assert "docker-credential-fleet get" in r.stderr  # the --debug command line
        # argv is `get` alone; the server came on stdin; once per pull.
        assert calls.read_text().splitlines() == [f"get <{host}>"] * 2

        (docker / "config.json").write_text(json.dumps({"credHelpers": {host: "locked"}}))
        r = cos("pull-image", "--tls-verify=false", ref, str(tmp_path / "t9"), env=env, check=False)
        refused(r, 6, f"credential helper docker-credential-locked failed for {host}")
        (docker / "config.json").write_text(json.dumps({"credsStore": "gone"}))
        r = cos("pull-image", "--tls-verify=false", ref, str(tmp_path / "t9"), env=env, check=False)
        refused(r, 6, "credential helper docker-credential-gone")
        assert not (tmp_path / "t9").exists()
