"""The bounded YAML loader: ordinary YAML loads as safe_load does; bombs, cycles and depth are refused."""

from __future__ import annotations

import time

import pytest
import yaml
from cvgl.core.bounded_yaml import MAX_DEPTH, YAMLBoundError, load_yaml


def test_ordinary_yaml_with_aliases_loads_like_safe_load():
    text = "base: &b {lr: 0.1, epochs: 3}\nruns: [*b, *b]\nlist: [1, [2, [3]]]\n"
    assert load_yaml(text) == yaml.safe_load(text)


def test_alias_bomb_is_refused_before_expansion():
    levels = "abcdefghi"
    text = f"a: &a [{', '.join(['x'] * 9)}]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip(levels, levels[1:])
    )
    t0 = time.time()
    with pytest.raises(YAMLBoundError, match="alias"):
        load_yaml(text, "config x.yaml")
    assert time.time() - t0 < 5


def test_self_referring_alias_is_refused():
    with pytest.raises(YAMLBoundError, match="containing it"):
        load_yaml("&a [1, *a]")


def test_depth_is_capped_with_and_without_aliases():
    assert load_yaml("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) is not None
    with pytest.raises(YAMLBoundError, match="nests deeper"):
        load_yaml("[" * 3000 + "]" * 3000)
    # Each anchor is within the bound; nesting them through aliases is not.
    half = MAX_DEPTH // 2 + 2
    text = "a: &a " + "[" * half + "1" + "]" * half + "\nb: " + "[" * half + "*a" + "]" * half + "\n"
    with pytest.raises(YAMLBoundError, match="nests deeper"):
        load_yaml(text)


def test_a_bound_error_is_not_a_yaml_error():
    # Overrides fall back to a plain string on a YAMLError; a bomb must not slip through that way.
    assert not issubclass(YAMLBoundError, yaml.YAMLError)
