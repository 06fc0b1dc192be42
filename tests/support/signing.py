"""A cosign key pair for tests and `cos sign` run the way a pipeline runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cos.oci import cosign


def key_pair(where: Path) -> tuple[Path, Path]:
    """where/cosign.key (cosign's encrypted format, empty password) and where/cosign.pub."""
    key = cosign.generate_key()
    key_file, pub_file = where / "cosign.key", where / "cosign.pub"
    key_file.write_bytes(cosign.encrypt_private_key(key, b"", n=32768))
    pub_file.write_bytes(cosign.public_pem(key))
    return key_file, pub_file


def sign(ref: str, key_file: Path, env: dict[str, str] | None = None) -> None:
    """`cos sign` of a registry image over plain HTTP, with the empty password."""
    subprocess.run(
        [sys.executable, "-m", "cos", "sign", "--key", str(key_file), "--tls-verify=false", ref],
        check=True,
        env={**(env or os.environ), "COSIGN_PASSWORD": ""},
    )
