"""The one YAML loader of the tool: safe (no tags run code) and bounded (no alias bomb, no deep nesting).

Every YAML text the tool reads (config files, ``k=v`` overrides, ``--grid``/``--zip`` values, a sweep's
saved point configs, GeoAlign's ``base_stream1.yml``) goes through :func:`load_yaml`. PyYAML's
``safe_load`` shares an aliased node instead of copying it, so a few hundred bytes of nested aliases
("billion laughs") load quickly but expand to billions of values as soon as anything walks the result
(validation, hashing, printing); and its composer recurses once per nesting level, so a few thousand
``[`` end in ``RecursionError``. The loader counts while it composes, before anything is built:

* nesting depth, counted with aliases expanded: at most :data:`MAX_DEPTH` levels;
* the size of the document with every alias expanded: at most :data:`MAX_NODES` values;
* aliases: at most :data:`MAX_ALIASES`, and an alias may not refer to a node that contains it.

A document over a bound raises :class:`YAMLBoundError`, which is not a ``yaml.YAMLError``: callers that
fall back to a plain string for text that is not YAML (overrides) still refuse a bomb.
"""

from __future__ import annotations

from typing import Any

import yaml

# Real configs nest 3-5 levels and hold at most a few thousand values (long sweep grids); these bounds
# are far above that and far below what costs time or stack.
MAX_DEPTH = 64
MAX_NODES = 200_000
MAX_ALIASES = 1_000


class YAMLBoundError(ValueError):
    """A YAML text over one of the loader's bounds. The message says which, in one line."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that measures each node as the composer finishes it.

    A node's expanded size and depth follow from its children's, which the composer always finishes
    first; an alias returns a finished node (its measures are known) unless it refers to a node still
    being composed, i.e. to one of its own ancestors (a cycle).
    """

    def __init__(self, stream: Any, where: str) -> None:
        super().__init__(stream)
        self._where = where
        self._depth = 0
        self._aliases = 0
        self._measures: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)

    def _refuse(self, what: str) -> YAMLBoundError:
        return YAMLBoundError(f"{self._where} {what}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._refuse(
                    f"uses more than {MAX_ALIASES} YAML aliases (*name); write the values out or use fewer aliases"
                )
            node = super().compose_node(parent, index)
            if id(node) not in self._measures:
                raise self._refuse("holds a YAML alias that refers to a node containing it; remove the cycle")
            self._check(*self._measures[id(node)], extra_depth=self._depth)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._refuse(f"nests deeper than {MAX_DEPTH} levels; flatten the structure")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, depth = 1, 1
        for child in children:
            c_size, c_depth = self._measures.get(id(child), (1, 1))
            size += c_size
            depth = max(depth, c_depth + 1)
        self._measures[id(node)] = (size, depth)
        self._check(size, depth, extra_depth=self._depth)
        return node

    def _check(self, size: int, depth: int, *, extra_depth: int) -> None:
        if depth + extra_depth > MAX_DEPTH:
            raise self._refuse(
                f"nests deeper than {MAX_DEPTH} levels once its aliases are expanded; flatten the structure"
            )
        if size > MAX_NODES:
            raise self._refuse(
                f"expands to more than {MAX_NODES:,} values once its aliases are expanded "
                "(a YAML alias bomb?); write the values out"
            )


def load_yaml(text: str | bytes, where: str = "the YAML text") -> Any:
    """``yaml.safe_load(text)`` within the bounds above; ``where`` names the text in errors.

    Raises ``yaml.YAMLError`` for text that is not YAML and :class:`YAMLBoundError` for YAML over a bound.
    """
    loader = _BoundedLoader(text, where)
    try:
        return loader.get_single_data()
    except RecursionError:
        # Out of stack below the depth bound (a caller already deep in its own recursion).
        raise YAMLBoundError(f"{where} nests too deeply to read; flatten the structure") from None
    finally:
        loader.dispose()
