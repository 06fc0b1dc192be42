"""Reference pages and shell completions generated from the code that defines them.

The config models, the cloud-config schema, the exit codes and the argument parser
are the single source of truth; `make docs` writes what this package renders, and a
unit test fails when a committed file differs from it. The parser is passed in, so
this package does not import the command line that uses it.
"""

from __future__ import annotations

import argparse
import json

from cos.cloudinit.schema import json_schema
from cos.docgen import cloud_config_ref, completion, config_ref, exit_codes

REGENERATE = "make docs"


def generated(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Repository-relative path → the content it must have."""
    return {
        "docs/config.md": config_ref.render(),
        "docs/cloud-config.md": cloud_config_ref.render(),
        "docs/cloud-config.schema.json": json.dumps(json_schema(), indent=2) + "\n",
        "docs/exit-codes.md": exit_codes.render(),
        f"src/cos/data/completion/{completion.BASH_FILE}": completion.bash(parser),
        f"src/cos/data/completion/{completion.ZSH_FILE}": completion.zsh(parser),
    }
