"""JSON documents from images, registries and signatures: parsed as untrusted input.

json.loads recurses once per nesting level, so a document of a few KB of brackets
raises RecursionError, which no caller expects from bad input. Every OCI document
(index, manifest, config, signature payload, bundle, referrers index, token reply)
goes through load_json, which makes that one more ValueError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def load_json(
    raw: bytes | str, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """json.loads, with nesting too deep for the parser raising ValueError."""
    try:
        return json.loads(raw, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
