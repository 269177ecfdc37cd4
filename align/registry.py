"""The alignment methods, by name: each registers one :class:`Method` (its inputs, parameters, train,
encode and, when not the default, its part of the keys).

A method is a file in ``align/methods/`` that calls :func:`register` once; the stage
(:mod:`align.stage`) does everything else for every method alike: finds and checks the inputs, derives
the keys, reuses or trains, writes checkpoints, history and the aligned entries. This module imports
no method: :func:`get` and :func:`check_config` load the built-in ones (``align.methods``) first.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvgl.configs.schema import Config, from_dict
from cvgl.core.errors import UserError

#: What a method reads (align/inputs.py), named by layers and roles: pooled descriptors of one layer
#: per view (``layer``: ``align.stream1_layer``, default the last), of several (``layers``:
#: ``align.layers``, default all), or of both; the ground and aerial roles' conv maps [C, h, w], read
#: by random access (``conv_maps``); or nothing (``none``: no aligned entries).
INPUT_KINDS = ("layer", "layers", "layer+layers", "conv_maps", "none")


@dataclass(frozen=True)
class MethodKey:
    """A method's part of its keys: ``run`` enters the run digest (next to the method's name, the seed
    and the input entries), ``entry`` each aligned entry's key."""

    run: dict
    entry: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """One alignment method.

    ``train(job)`` trains on ``job.train`` (see :class:`align.stage.TrainJob`), saves its checkpoints
    with ``job.save`` and returns the model; ``encode(model, view, role)`` gives the aligned
    descriptors (float32 ``[n, d]``) of one input view, whose role is ``ground`` or ``aerial``.
    ``params`` is the dataclass ``align.params`` fills (None: the method takes none; ``align.params``
    is then only recorded); ``defaults(sizes, given)`` gives the parameters that follow the data
    (``sizes``: ``in_dim``, ``shard_rows``) unless ``align.params`` (``given``) sets them.
    ``key(cfg, params, inputs)`` returns the :class:`MethodKey` when it is not the default: every
    resolved parameter, and the compute dtype when it is not float32 (:func:`default_key`).
    """

    name: str
    inputs: str
    train: Callable[[Any], Any] | None = None
    encode: Callable[[Any, Any, str], Any] | None = None
    params: type | None = None
    defaults: Callable[[dict, dict], dict] | None = None
    key: Callable[[Config, Any, Any], MethodKey] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"method {self.name}: inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")
        if self.inputs != "none" and (self.train is None or self.encode is None):
            raise ValueError(f"method {self.name}: a method with inputs needs train and encode")


def default_key(cfg: Config, params: Any, inputs: Any) -> MethodKey:
    """Every resolved parameter (``align.params`` as given, for a method without any), and the
    training compute dtype when it resolves to other than float32 (so float32 keys never change)."""
    return MethodKey({"params": asdict_or(params, cfg.align.params), **dtype_part(cfg)})


def asdict_or(params: Any, given: dict) -> dict:
    return dataclasses.asdict(params) if params is not None else dict(given)


def dtype_part(cfg: Config) -> dict:
    """``{"dtype": …}`` when ``align.dtype`` resolves to other than float32 on ``align.device``."""
    from cvgl.align.training import compute_dtype
    from cvgl.core.devices import resolve_device

    dtype = compute_dtype(cfg.align.dtype, str(resolve_device(cfg.align.device, "align.device")))
    return {"dtype": dtype} if dtype != "float32" else {}


class Registry:
    """Name → :class:`Method`; one per process (:data:`METHODS`)."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self._builtins_loaded = False

    def register(self, method: Method) -> Method:
        """Add ``method``; registering a name twice replaces it (a module imported again)."""
        self._methods[method.name] = method
        return method

    def all(self) -> list[Method]:
        """The registered methods, built-in ones included."""
        self._load_builtins()
        return list(self._methods.values())

    def names(self) -> list[str]:
        """The registered names, built-in ones included."""
        self._load_builtins()
        return sorted(self._methods)

    def get(self, name: str) -> Method:
        """The method named ``name``; an unknown name is a one-line UserError naming the closest."""
        self._load_builtins()
        if name in self._methods:
            return self._methods[name]
        hint = difflib.get_close_matches(name, sorted(self._methods), n=1)
        raise UserError(
            f"unknown align.method {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {', '.join(sorted(self._methods))}")
        )

    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            import importlib

            importlib.import_module("cvgl.align.methods")


#: The process's registry (module state: registration happens when a method's module is imported).
METHODS = Registry()


def register(method: Method) -> Method:
    """Make ``method`` available as ``align.method=<method.name>``; returns it."""
    return METHODS.register(method)


def get(name: str) -> Method:
    """The registered method ``name`` (did-you-mean for an unknown one)."""
    return METHODS.get(name)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _section_type(cls: type, key: str) -> Any:
    return typing.get_type_hints(cls).get(key) if key in _fields(cls) else None


def _others_keys(method: Method) -> set[str]:
    """The ``align.params`` keys of the other registered methods."""
    return {k for m in METHODS.all() if m.params is not None and m is not method for k in _fields(m.params)}


def validate_params(method: Method, params: dict) -> None:
    """Refuse ``align.params`` keys that neither ``method``'s parameter dataclass nor any other
    registered method's has (closest key named), and values a field's ``choices`` exclude.

    One config may carry the parameters of several methods (a sweep over ``align.method`` shares
    it): each method takes its own keys.
    """
    if method.params is None:
        return
    fields = _fields(method.params)
    names = sorted(fields)
    unknown = [k for k in params if k not in fields and k not in _others_keys(method)]
    if unknown:
        hint = difflib.get_close_matches(str(unknown[0]), names, n=1)
        raise UserError(
            f"unknown align.params key {unknown[0]!r} for {method.params.__name__}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(names)}")
        )
    owners = [method] + [m for m in METHODS.all() if m is not method and m.params is not None]
    for k, v in params.items():
        section = next((t for m in owners if dataclasses.is_dataclass(t := _section_type(m.params, k))), None)
        if section is not None:
            if not isinstance(v, dict):
                raise UserError(f"align.params.{k} must be a mapping of keys, got {v!r}; set its keys as align.params.{k}.KEY=VALUE")
            from_dict(section, v, f"align.params.{k}")  # a section's keys and values, checked as the config's
        choices = fields[k].metadata.get("choices") if k in fields else None
        if choices and v not in choices:
            raise UserError(
                f"align.params.{k}={v!r} contradicts align.method={method.name!r}; "
                f"use {' or '.join(map(repr, choices))}, or drop the param"
            )


def resolve_params(method: Method, params: dict, sizes: dict) -> Any:
    """``method.params`` from its keys of ``align.params`` on top of the data-derived defaults; None
    without params. A field that is itself a dataclass is filled from its mapping like a config section
    (values converted, unknown keys refused); other values are passed as they are (not converted), so
    a run's key records what was asked.
    """
    if method.params is None:
        return None
    validate_params(method, params)
    fields = _fields(method.params)
    own = {k: v for k, v in params.items() if k in fields}
    auto = method.defaults(sizes, own) if method.defaults is not None else {}
    merged = {k: v for k, v in auto.items() if k not in own}
    merged.update(own)
    hints = typing.get_type_hints(method.params)
    for k, v in merged.items():
        if dataclasses.is_dataclass(hints.get(k)) and not dataclasses.is_dataclass(v):
            merged[k] = from_dict(hints[k], v or {}, f"align.params.{k}")
    try:
        return method.params(**merged)
    except TypeError as e:
        raise UserError(f"align.params: {e}") from None


def check_config(cfg: Config) -> None:
    """Check ``align.method`` and ``align.params`` as soon as a config loads, before any extraction."""
    validate_params(get(cfg.align.method), cfg.align.params)
