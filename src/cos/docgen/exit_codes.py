"""docs/exit-codes.md from cos.errors."""

from __future__ import annotations

from cos.errors import MEANINGS, CosError, ExitCode

HEADER = "<!-- Generated from src/cos/errors.py by `make docs`; do not edit. -->\n"


def _classes() -> dict[ExitCode, list[str]]:
    """Error classes of cos.errors by the exit code they carry."""
    out: dict[ExitCode, list[str]] = {}
    todo = [CosError]
    while todo:
        cls = todo.pop(0)
        if cls.__module__ == "cos.errors" and cls is not CosError:
            out.setdefault(cls.exit_code, []).append(cls.__name__)
        todo += cls.__subclasses__()
    return out


def render() -> str:
    classes = _classes()
    lines = [
        HEADER,
        "# Exit codes",
        "",
        "Every error is one line `cos: error: …` on stderr, and, when there is something to",
        "do about it, a `hint: …` line. The exit code tells scripts what kind of error it was.",
        "",
        "| code | name | meaning |",
        "|---|---|---|",
    ]
    for code in ExitCode:
        raised = ", ".join(f"`{c}`" for c in classes.get(code, []))
        meaning = MEANINGS[code] + (f" ({raised})" if raised else "")
        lines.append(f"| {int(code)} | `{code.name}` | {meaning} |")
    lines += [
        "",
        "An exit code of 1 is always a bug in cos: please report it with the output of the",
        "same command run with `--debug`.",
        "",
        "With `--json` the same message, hint and code also come as an `error` event on",
        "stdout, followed by the `result` event ([json-events.md](json-events.md)).",
        "",
    ]
    return "\n".join(lines)
