"""YAML with positions: every mapping and list remembers where each key and item was.

Errors in user configs must point at file:line:column. PyYAML's SafeLoader is
extended to keep marks, and to read `0o755` as an octal integer the way yip (YAML
1.2) does, alongside YAML 1.1's `0755`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class Mark:
    __slots__ = ("column", "line", "source")

    def __init__(self, source: str, line: int, column: int) -> None:
        self.source, self.line, self.column = source, line, column

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"


class MarkedDict(dict[Any, Any]):
    mark: Mark
    key_marks: dict[Any, Mark]
    value_marks: dict[Any, Mark]


class MarkedList(list[Any]):
    mark: Mark
    item_marks: list[Mark]


def _mark(loader: _Loader, node: yaml.Node) -> Mark:
    m = node.start_mark
    return Mark(loader.source, m.line + 1, m.column + 1)


class _Loader(yaml.SafeLoader):
    source = "<string>"


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> MarkedDict:
    loader.flatten_mapping(node)
    out = MarkedDict()
    out.mark = _mark(loader, node)
    out.key_marks, out.value_marks = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "unhashable key", key_node.start_mark
            ) from None
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_marks[key] = _mark(loader, key_node)
        out.value_marks[key] = _mark(loader, value_node)
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    out = MarkedList(loader.construct_object(child, deep=True) for child in node.value)
    out.mark = _mark(loader, node)
    out.item_marks = [_mark(loader, child) for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_implicit_resolver("tag:cos:octal", re.compile(r"^0o[0-7_]+$"), list("0"))
_Loader.add_constructor(
    "tag:cos:octal", lambda loader, node: int(node.value[2:].replace("_", ""), 8)
)


class YamlError(Exception):
    def __init__(self, mark: Mark, message: str) -> None:
        super().__init__(f"{mark}: {message}")
        self.mark, self.message = mark, message


MAX_DEPTH = 64  # nesting levels of mappings and lists
MAX_NODES = 200_000  # values, counting each use of an alias again
MAX_NUMBER = 100  # digits of a number (mode, uid, size: none needs more)


def _check_size(node: yaml.Node | None, source: str) -> None:
    """Refuse documents that would make validation slow or deep: aliases re-used to
    build an exponential tree, or nesting no real config needs."""
    if node is None:
        return
    seen = 0
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    while stack:
        n, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise YamlError(_node_mark(n, source), f"more than {MAX_NODES} values (aliases?)")
        if depth > MAX_DEPTH:
            raise YamlError(_node_mark(n, source), f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(n, yaml.MappingNode):
            stack += [(c, depth + 1) for pair in n.value for c in pair]
        elif isinstance(n, yaml.SequenceNode):
            stack += [(c, depth + 1) for c in n.value]
        elif n.tag.endswith((":int", ":float", ":octal")) and len(n.value) > MAX_NUMBER:
            raise YamlError(_node_mark(n, source), f"a number longer than {MAX_NUMBER} digits")


def _check_depth(text: str, source: str) -> None:
    """Nesting checked on the event stream (which PyYAML parses without recursion), so
    a deep document gets a located error instead of exhausting the composer's stack."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                m = event.start_mark
                where = Mark(source, m.line + 1, m.column + 1) if m else Mark(source, 1, 1)
                raise YamlError(where, f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _node_mark(node: yaml.Node, source: str) -> Mark:
    return Mark(source, node.start_mark.line + 1, node.start_mark.column + 1)


def load(text: str, source: str) -> Any:
    """Parse one YAML document; raise YamlError with the position of the problem."""
    loader: _Loader | None = None
    try:
        _check_depth(text, source)
        loader = _Loader(text)
        loader.source = source
        node = loader.get_single_node()
        _check_size(node, source)
        return loader.construct_document(node) if node is not None else None
    except RecursionError:
        raise YamlError(
            Mark(source, 1, 1), f"invalid YAML: nested deeper than {MAX_DEPTH} levels"
        ) from None
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise YamlError(Mark(source, 1, 1), f"invalid YAML value: {exc}") from exc
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        mark = Mark(source, m.line + 1, m.column + 1) if m else Mark(source, 1, 1)
        raise YamlError(mark, f"invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlError(Mark(source, line, col), f"invalid YAML: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise YamlError(Mark(source, 1, 1), f"invalid YAML: {exc}") from exc
    finally:
        if loader is not None:
            loader.dispose()
