"""Where cloud-configs come from: the default directories of a system (or of a tree
under --root), the config's extra paths and the kernel command line's cos.setup=."""

from __future__ import annotations

from pathlib import Path

from cos.config import Config, read_yaml_mapping
from cos.errors import ConfigError

DEFAULT_PATHS = ["/system/oem", "/oem", "/usr/local/cloud-config"]
SETUP_PREFIXES = ("cos.setup=", "elemental.setup=")


def setup_sources(cmdline: str) -> list[str]:
    """Cloud-configs the kernel command line names (cos.setup=PATH|URL)."""
    out = []
    for tok in cmdline.split():
        for prefix in SETUP_PREFIXES:
            if tok.startswith(prefix):
                out.append(tok[len(prefix) :])
    return out


def kernel_cmdline() -> str:
    try:
        return Path("/proc/cmdline").read_text()
    except OSError:
        return ""


def default_sources(cfg: Config, root: Path, cmdline: str) -> list[str]:
    paths = [*DEFAULT_PATHS, *cfg.cloud_init_paths]
    local = [str(root / p.lstrip("/")) for p in paths if (root / p.lstrip("/")).exists()]
    return local + setup_sources(cmdline)


def system_sources(cfg: Config) -> list[str]:
    """Hook sources of the running system: the default cloud-config paths + cmdline."""
    return default_sources(cfg, Path("/"), kernel_cmdline())


def build_sources(cfg: Config, files: list[Path]) -> list[str]:
    """Hook sources of a build on a build machine (build-disk, build-iso): the config's
    paths that exist and the files given; never the build machine's own /oem."""
    return [p for p in cfg.cloud_init_paths if Path(p).exists()] + [str(f) for f in files]


def check_cloud_init(files: list[Path]) -> None:
    """Files given with --cloud-init exist and are YAML mappings (before any write)."""
    for f in files:
        if not f.is_file():
            raise ConfigError(
                f"cloud-init file {f} does not exist", hint="check the --cloud-init path"
            )
        read_yaml_mapping(f)
