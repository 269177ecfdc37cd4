"""The alignment methods, by name: each registers one :class:`Method` (its parameters, inputs, train, encode).

A method is a file in ``align/methods/`` that calls :func:`register` once; the stage
(:mod:`align.stage`) does everything else for every method alike: finds and checks the inputs, derives
the keys, reuses or trains, writes checkpoints, history and the aligned entries. This module imports
no method: :func:`get` and :func:`check_config` load the built-in ones (``align.methods``) first.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cvgl.configs.schema import Config
from cvgl.core.errors import UserError

#: The input kinds the stage provides (align/inputs.py): pooled descriptors of one or more layers as
#: tensors, conv maps read by random access (CVFT), or nothing (identity: no aligned entries).
INPUT_KINDS = ("descriptors", "conv_maps", "none")
#: Which layers a ``descriptors`` method reads: the stream-1 layer, the ISMS layers, or both.
LAYER_SETS = ("stream1", "isms", "both")


@dataclass(frozen=True)
class Method:
    """One alignment method.

    ``train(job)`` trains on ``job.train`` (see :class:`align.stage.TrainJob`), saves its checkpoints
    with ``job.save`` and returns the model; ``encode(model, view, role)`` gives the aligned
    descriptors (float32 ``[n, d]``) of one input view, whose role is ``ground`` or ``aerial``.
    ``params`` is the dataclass ``align.params`` fills (None: the method takes none; ``align.params``
    is then only recorded); ``defaults(sizes, given)`` gives the parameters that follow the data
    (``sizes``: ``in_dim``, ``shard_rows``) unless ``align.params`` (``given``) sets them;
    ``check_params(given)`` refuses combinations the dataclass alone cannot see. ``key_params(cfg,
    params, layers)`` is what of the parameters enters the run digest; ``spec_extra`` is added to each
    aligned entry's key.
    """

    name: str
    inputs: str
    train: Callable[[Any], Any] | None = None
    encode: Callable[[Any, Any, str], Any] | None = None
    params: type | None = None
    layers: str = "stream1"
    defaults: Callable[[dict, dict], dict] | None = None
    check_params: Callable[[dict], None] | None = None
    key_params: Callable[[Config, Any, Any], dict] | None = None
    dtype_in_key: bool = True
    spec_extra: dict = dataclasses.field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_KINDS:
            raise ValueError(f"method {self.name}: inputs must be one of {INPUT_KINDS}, got {self.inputs!r}")
        if self.layers not in LAYER_SETS:
            raise ValueError(f"method {self.name}: layers must be one of {LAYER_SETS}, got {self.layers!r}")
        if self.inputs != "none" and (self.train is None or self.encode is None):
            raise ValueError(f"method {self.name}: a method with inputs needs train and encode")


class Registry:
    """Name → :class:`Method`; one per process (:data:`METHODS`)."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        self._builtins_loaded = False

    def register(self, method: Method) -> Method:
        """Add ``method``; registering a name twice replaces it (a module imported again)."""
        self._methods[method.name] = method
        return method

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


def validate_params(method: Method, params: dict) -> None:
    """Refuse ``align.params`` keys that ``method``'s parameter dataclass lacks (closest key named)."""
    if method.params is None:
        return
    fields = sorted(f.name for f in dataclasses.fields(method.params))
    unknown = [k for k in params if k not in fields]
    if unknown:
        hint = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        raise UserError(
            f"unknown align.params key {unknown[0]!r} for {method.params.__name__}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(fields)}")
        )
    if method.check_params is not None:
        method.check_params(params)


def resolve_params(method: Method, params: dict, sizes: dict) -> Any:
    """``method.params`` from ``align.params`` on top of the data-derived defaults; None without params.

    The given values are passed as they are (not converted), so a run's key records what was asked.
    """
    if method.params is None:
        return None
    validate_params(method, params)
    auto = method.defaults(sizes, params) if method.defaults is not None else {}
    merged = {k: v for k, v in auto.items() if k not in params}
    merged.update(params)
    try:
        return method.params(**merged)
    except TypeError as e:
        raise UserError(f"align.params: {e}") from None


def check_config(cfg: Config) -> None:
    """Check ``align.method`` and ``align.params`` as soon as a config loads, before any extraction."""
    validate_params(get(cfg.align.method), cfg.align.params)
