"""images/base/apt-sources: the machine's Debian sources moved to another release."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "images/base/apt-sources"

DEB822 = """Types: deb
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.test/debian-security
Suites: bookworm-security
Components: main contrib

Types: deb-src
URIs: http://mirror.test/debian
Suites: bookworm
"""


def _run(root: Path, release: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), release],
        env={"APT_SOURCES_ROOT": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )


def _root(tmp_path: Path, files: dict[str, str]) -> Path:
    """A root whose /etc has a bookworm os-release and the apt files given."""
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/os-release").write_text('ID=debian\nVERSION_CODENAME="bookworm"\n')
    for name, text in files.items():
        (tmp_path / "etc/apt" / name).write_text(text)
    return tmp_path


def test_suites_of_the_hosts_release_are_moved(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        {
            "sources.list.d/debian.sources": DEB822,
            "sources.list": "deb http://other.test/x nodistro main\n"
            "deb [arch=amd64] http://mirror.test/debian bookworm-backports main\n",
            "sources.list.d/extra.list": "deb [signed-by=/k/bookworm.gpg]"
            " http://mirror.test/debian bookworm non-free\n",
        },
    )
    r = _run(root, "trixie")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
        " http://mirror.test/debian trixie main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
        " http://mirror.test/debian trixie-updates main",
        "deb http://mirror.test/debian-security trixie-security main contrib",
        # a keyring named for the host's release would not verify another release
        "deb http://mirror.test/debian trixie non-free",
    ]


def test_no_suite_of_the_hosts_release_is_refused(tmp_path: Path) -> None:
    root = _root(tmp_path, {"sources.list": "deb http://other.test/x nodistro main\n"})
    r = _run(root, "trixie")
    assert r.returncode != 0 and r.stdout == ""
    assert "no bookworm suite" in r.stderr
