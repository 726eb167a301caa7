"""YAML loading that a hostile file cannot turn into a crash, a hang or a memory blow-up.

PyYAML's safe loader still composes recursively (deep nesting ends in `RecursionError`), keeps
self-referencing aliases (`&a [*a]`, which loop any code that walks the result) and shares aliased
nodes, so 300 bytes of nested aliases ("billion laughs") expand to billions of values as soon as
anything copies or serialises them. This loader counts while it composes and stops at the first
limit passed, with the line it was passed on. Front matter and config files both load through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, SequenceNode


@dataclass(frozen=True)
class YamlLimits:
    """What one YAML document may hold: nesting levels of lists and mappings, alias uses, and
    values once every alias is expanded (what a consumer that copies the data will see)."""

    max_depth: int = 32
    max_aliases: int = 100
    max_nodes: int = 100_000


class YamlLimitError(yaml.MarkedYAMLError):
    """A document passed one of its `YamlLimits`; `limit` names which (a YamlLimits field, or
    "recursive" for an alias inside its own anchor, which no limit can allow)."""

    def __init__(self, problem: str, mark: yaml.Mark | None, limit: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.limit = limit


class _LimitedLoader(yaml.SafeLoader):
    def __init__(self, text: str, limits: YamlLimits) -> None:
        super().__init__(text)
        self._limits = limits
        self._depth = 0
        self._aliases = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[Node, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        limits = self._limits
        if isinstance(event, AliasEvent):
            if event.anchor in self._open_anchors:
                raise YamlLimitError(
                    f"alias *{event.anchor} is inside its own anchor &{event.anchor} "
                    "(a structure that contains itself has no end)",
                    event.start_mark,
                    "recursive",
                )
            self._aliases += 1
            if self._aliases > limits.max_aliases:
                raise YamlLimitError(
                    f"more than {limits.max_aliases} aliases", event.start_mark, "max_aliases"
                )
            return super().compose_node(parent, index)
        nested = isinstance(event, SequenceStartEvent | MappingStartEvent)
        if nested:
            self._depth += 1
            if self._depth > limits.max_depth:
                raise YamlLimitError(
                    f"nested deeper than {limits.max_depth} levels", event.start_mark, "max_depth"
                )
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            if nested:
                self._depth -= 1
            self._open_anchors.discard(event.anchor)
        size = 1 + self._children_size(node)
        if size > limits.max_nodes:
            raise YamlLimitError(
                f"expands to more than {limits.max_nodes} values (aliases included)",
                node.start_mark,
                "max_nodes",
            )
        self._sizes[node] = size
        return node

    def _children_size(self, node: Node) -> int:
        if isinstance(node, SequenceNode):
            return sum(self._sizes[child] for child in node.value)
        if isinstance(node, MappingNode):
            return sum(self._sizes[key] + self._sizes[value] for key, value in node.value)
        return 0

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """Constructors raise plain Python errors on bad values (`2024-13-45`, a 5,000-digit int);
        give them the value's line like every other YAML error."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value {_preview(node)}: {exc}", node.start_mark
            ) from None


def _preview(node: Node) -> str:
    text = str(node.value) if not isinstance(node.value, list) else node.tag
    return repr(text if len(text) <= 40 else text[:37] + "...")


def load(text: str, limits: YamlLimits | None = None) -> tuple[Any, Node | None]:
    """One YAML document as Python data plus its root node (for the line of every key).

    Raises `yaml.YAMLError` (a `YamlLimitError` for a passed limit), always with a mark.
    """
    loader = _LimitedLoader(text, limits or YamlLimits())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return data, node
