"""The Go-template forms real cloud-configs use: `{{ .Values.node.hostname }}`,
`{{ .MachineID }}`, pipelines and a few sprig functions (upper, lower, trim, trunc,
default, quote, replace, trimPrefix, trimSuffix). Anything else (if, range, define…)
is a clear error rather than a silent pass-through.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class TemplateError(Exception):
    pass


_ACTION = re.compile(r"\{\{(-?)(.*?)(-?)\}\}", re.S)
_KEYWORDS = {
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
}
NO_VALUE = "<no value>"


def _trunc(n: Any, s: Any) -> str:
    count, text = int(n), str(s)
    return text[:count] if count >= 0 else text[count:]


def _default(d: Any, v: Any = None) -> Any:
    return d if v in (None, "", NO_VALUE, 0, False, [], {}) else v


FUNCS: dict[str, Callable[..., Any]] = {
    "upper": lambda s: str(s).upper(),
    "lower": lambda s: str(s).lower(),
    "trim": lambda s: str(s).strip(),
    "trunc": _trunc,
    "default": _default,
    "quote": lambda s: '"' + str(s).replace('"', '\\"') + '"',
    "replace": lambda old, new, s: str(s).replace(str(old), str(new)),
    "trimPrefix": lambda p, s: str(s).removeprefix(str(p)),
    "trimSuffix": lambda p, s: str(s).removesuffix(str(p)),
}


def _field(path: str, data: dict[str, Any]) -> Any:
    cur: Any = data
    for part in path.strip(".").split("."):
        if not part:
            continue
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return NO_VALUE
    return cur


def _operand(tok: str, data: dict[str, Any]) -> Any:
    if tok.startswith("."):
        return _field(tok, data)
    if re.fullmatch(r"-?\d+", tok):
        return int(tok)
    if tok in ("true", "false"):
        return tok == "true"
    return tok  # a string literal, already unquoted by shlex


def _command(words: list[tuple[str, bool]], prev: Any, has_prev: bool, data: dict[str, Any]) -> Any:
    head, quoted = words[0]
    if not quoted and head in _KEYWORDS:
        raise TemplateError(f"template action '{head}' is not supported")
    if not quoted and not head.startswith(".") and not re.fullmatch(r"-?\d+", head):
        fn = FUNCS.get(head)
        if fn is None:
            raise TemplateError(
                f"template function '{head}' is not supported (supported: {', '.join(FUNCS)})"
            )
        args = [_operand(w, data) if not q else w for w, q in words[1:]]
        if has_prev:
            args.append(prev)
        try:
            return fn(*args)
        except (TypeError, ValueError) as exc:
            raise TemplateError(f"template function '{head}': {exc}") from exc
    if len(words) > 1 or has_prev:
        raise TemplateError(f"cannot apply arguments to {head!r}")
    return head if quoted else _operand(head, data)


def _words(cmd: str) -> list[tuple[str, bool]]:
    out = []
    raw = re.findall(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\S+', cmd)
    for r in raw:
        quoted = r[:1] in ('"', "`")
        out.append((r[1:-1].replace('\\"', '"') if quoted else r, quoted))
    return out


def render(text: str, data: dict[str, Any]) -> str:
    """Render text; raise TemplateError for a construct outside the supported subset."""
    if "{{" not in text:
        return text
    out: list[str] = []
    pos = 0
    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        out.append(chunk)
        body = m.group(2).strip()
        if body.startswith("/*"):
            value: Any = ""
        else:
            value, has = None, False
            for cmd in _split_pipe(body):
                words = _words(cmd)
                if not words:
                    raise TemplateError(f"empty template command in {m.group(0)!r}")
                value, has = _command(words, value, has, data), True
        out.append("" if value is None else _go_str(value))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(text[pos:])
    return "".join(out)


def _split_pipe(body: str) -> list[str]:
    parts, cur, q = [], "", ""
    for ch in body:
        if q:
            cur += ch
            if ch == q:
                q = ""
        elif ch in ('"', "`"):
            q = ch
            cur += ch
        elif ch == "|":
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def _go_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_str(x)}" for k, x in sorted(v.items())) + "]"
    if isinstance(v, list):
        return "[" + " ".join(_go_str(x) for x in v) + "]"
    return str(v)
