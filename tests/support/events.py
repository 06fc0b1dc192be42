"""Checking `--json` event streams: a small JSON Schema validator and the stream rules.

The validator covers the part of JSON Schema docs/events.schema.json uses (type,
const, enum, properties, required, additionalProperties, propertyNames, oneOf,
pattern, minimum), so the tests need no extra dependency.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs/events.schema.json"

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """What is wrong with value under schema; empty when it validates."""
    out: list[str] = []
    known = {
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "const",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "oneOf",
        "pattern",
        "minimum",
    }
    unknown = set(schema) - known
    assert not unknown, f"validator does not know {unknown}"
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, n) for n in names):
            return [f"{path}: {value!r} is not of type {schema['type']}"]
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        out.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        out.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        out.append(f"{path}: {value!r} is below {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if "propertyNames" in schema:
                out += errors(k, schema["propertyNames"], f"{path}.{k}(name)")
            if k in props:
                out += errors(v, props[k], f"{path}.{k}")
            elif extra is False:
                out.append(f"{path}: unexpected {k!r}")
            elif isinstance(extra, dict):
                out += errors(v, extra, f"{path}.{k}")
    if "oneOf" in schema:
        results = [errors(value, s, path) for s in schema["oneOf"]]
        matched = [r for r in results if not r]
        if len(matched) != 1:
            best = min(results, key=len)
            out.append(f"{path}: matches {len(matched)} of oneOf, not 1 ({'; '.join(best)})")
    return out


def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return data


def parse(stdout: str) -> list[dict[str, Any]]:
    """The events of a --json run, checked against the stream's rules:
    every line one valid event, start first, exactly one result and it is last,
    every step-start closed by a step-end of the same step and depth (LIFO)."""
    sch = schema()
    lines = stdout.splitlines()
    assert lines, "no events on stdout"
    evs = []
    for n, line in enumerate(lines, 1):
        ev = json.loads(line)
        problems = errors(ev, sch)
        assert not problems, f"line {n}: {line}\n" + "\n".join(problems)
        evs.append(ev)
    assert evs[0]["event"] == "start", evs[0]
    assert [e["event"] for e in evs].count("result") == 1 and evs[-1]["event"] == "result"
    assert len({e["command"] for e in evs}) == 1
    open_steps: list[tuple[str, int]] = []
    for e in evs:
        if e["event"] == "step-start":
            assert e["depth"] == len(open_steps), e
            open_steps.append((e["step"], e["depth"]))
        elif e["event"] == "step-end":
            assert open_steps and open_steps.pop() == (e["step"], e["depth"]), e
    assert not open_steps, f"steps never ended: {open_steps}"
    return evs


def result(evs: list[dict[str, Any]]) -> dict[str, Any]:
    return evs[-1]


def of(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] == kind]


def check_failed(stdout: str, exit_code: int, words: str) -> list[dict[str, Any]]:
    """A failed run: one error event naming words, with a hint, then result ok=false."""
    evs = parse(stdout)
    (err,) = of(evs, "error")
    assert err["exit_code"] == exit_code and words in err["message"], err
    assert err["hint"]
    assert result(evs)["ok"] is False and result(evs)["exit_code"] == exit_code
    return evs


def check_pulled(evs: list[dict[str, Any]]) -> dict[str, int]:
    """Progress events per blob reach the blob's size and never go back; returns sizes."""
    sizes: dict[str, int] = {}
    seen: dict[str, int] = {}
    for e in of(evs, "progress"):
        assert e["bytes"] >= seen.get(e["what"], 0), e
        seen[e["what"]] = e["bytes"]
        sizes[e["what"]] = e["total"]
    assert sizes, "no progress events"
    assert seen == sizes, f"blobs not complete: {seen} vs {sizes}"
    return sizes
