"""Write the generated reference pages and shell completions (`make docs`).

What is written comes from cos.docgen; tests/unit/test_docs.py fails when a committed
file differs from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from cos.cli import build_parser
from cos.docgen import generated

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    for rel, text in generated(build_parser()).items():
        path = ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() == text:
            continue
        path.write_text(text)
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
