"""What an alignment method reads, found and checked once for every method (the input kinds).

``layer``, ``layers``, ``layer+layers``: pooled descriptors of one layer, of several, or of both, read
whole as tensors, per view (:class:`ViewData`). ``conv_maps``: VGG conv maps ``[C, h, w]`` per row, one ground and one aerial
entry whose row i is pair i, read by random access (:class:`EntryRows`), never whole.
Both give :class:`Inputs`: the views to align, the training views by role, and the parts of the run
digest that name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cvgl.cache.naming import extracted_alias, query_gallery_views
from cvgl.cache.shards import read_shard_rows
from cvgl.cache.store import CacheStore, Entry
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.datasets.view_roles import pair_roles

#: GeoAlign's branch names for the two roles (and the training views' names in the run digest).
BRANCH = {"ground": "dro", "aerial": "sat"}


@dataclass
class ViewData:
    """One view's cached descriptors, per layer, with its labels and names."""

    view: str
    entries: dict[int, Entry]
    tensors: dict[int, torch.Tensor]
    labels: np.ndarray
    names: list[str]

    @property
    def keys(self) -> list[str]:
        """The parent entries' keys, in layer order."""
        return [self.entries[L].key for L in sorted(self.entries)]

    @property
    def count(self) -> int:
        return len(self.names)


@dataclass
class MapView:
    """One view's conv-map entry (read by random access or streamed, never whole)."""

    view: str
    entry: Entry

    @property
    def keys(self) -> list[str]:
        return [self.entry.key]

    @property
    def count(self) -> int:
        return self.entry.count

    @property
    def labels(self) -> np.ndarray:
        return self.entry.labels()

    @property
    def names(self) -> list[str]:
        return self.entry.names()


@dataclass
class Layers:
    """The layers of the descriptor inputs: the one layer (``align.stream1_layer``, default the last)
    and the stacked layers (``align.layers``, default all)."""

    single: Any
    stack: list


@dataclass
class Inputs:
    """The views to align (query first), the training views by role, and their part of the run digest."""

    eval: dict[str, Any]  # view → ViewData | MapView
    train: dict[str, Any]  # role (dro/sat, ground/aerial) → ViewData | MapView
    roles: dict[str, str]  # view → ground | aerial
    key: dict  # {"train": …, "eval": …} as the run digest records them
    sizes: dict  # what parameter defaults follow: in_dim, shard_rows
    layers: Layers | None = None
    transductive: bool = True
    parents: dict[str, str] = field(default_factory=dict)  # parent:<alias or layer> → key, for run.json


class EntryRows:
    """``rows(idx)`` → float32 maps of the entry's rows ``idx`` (sorted), read shard by shard."""

    def __init__(self, entry: Entry) -> None:
        self.paths = entry.shard_paths()
        self.identities = entry.shard_identities()
        self.starts = np.array([s.row_start for s in entry.manifest.shards], dtype=np.int64)
        self.ends = np.array([s.row_end for s in entry.manifest.shards], dtype=np.int64)
        self.shape = entry.shape

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        shard_of = np.searchsorted(self.ends, sorted_idx, side="right")
        out = np.empty((len(idx), *self.shape), dtype=np.float32)
        for s in np.unique(shard_of):
            sel = shard_of == s
            local = sorted_idx[sel] - self.starts[s]
            out[order[sel]] = read_shard_rows(self.paths[s], local, expect=self.identities[s])
        return out


def _both_or_neither(cfg: Config, drone: str = "", satellite: str = "") -> None:
    if bool(cfg.align.train_drone) != bool(cfg.align.train_satellite):
        raise UserError(f"set both align.train_drone{drone} and align.train_satellite{satellite}, or neither")


# ------------------------------------------------------------------------------------ descriptors


def layer_names(cfg: Config) -> list:
    """The layers of the entries to align: ``backbone.layers``, or with entries named explicitly
    (``align.query``), one per entry: ``backbone.layers`` when it has as many, else 0, 1, …"""
    layers = list(cfg.backbone.layers)
    given = cfg.align.query or cfg.align.gallery
    if not given or len(given) == len(layers):
        return layers
    return list(range(len(given)))


def _aliases(cfg: Config, layers: list, explicit: list[str], view: str, what: str) -> dict:
    if not explicit:
        return {L: extracted_alias(cfg, view, L) for L in layers}
    if len(explicit) != len(layers):
        raise UserError(
            f"align.{what} lists {len(explicit)} entries but align.query/align.gallery list {len(layers)}; "
            "give one alias per layer, in the same layer order"
        )
    return dict(zip(layers, explicit))


def method_layers(cfg: Config, layers: list) -> Layers:
    """The one layer (``align.stream1_layer``, else the last) and the stack (``align.layers``, else all)."""
    single = cfg.align.stream1_layer if cfg.align.stream1_layer is not None else layers[-1]
    if single not in layers:
        raise UserError(f"align.stream1_layer={single} is not among the layers {layers}")
    stack = list(cfg.align.layers or layers)
    bad = [L for L in stack if L not in layers]
    if bad:
        raise UserError(f"align.layers {bad} are not among the layers {layers}")
    return Layers(single, stack)


def _load_view(store: CacheStore, view: str, aliases: dict, layers: set) -> ViewData:
    entries = {L: store.open(a) for L, a in aliases.items() if L in layers}
    tensors: dict = {}
    labels = names = None
    for L, e in entries.items():
        d, lab, nm = e.read()
        if names is not None and nm != names:
            raise UserError(
                f"entries {', '.join(aliases[x] for x in entries)} list different images; align layers of one image list"
            )
        tensors[L] = torch.from_numpy(d.reshape(d.shape[0], -1))
        labels, names = lab, nm
    assert labels is not None and names is not None
    return ViewData(view, entries, tensors, labels, names)


def _check_descriptors(views: list[ViewData]) -> None:
    for vd in views:
        if not all(torch.isfinite(t).all() for t in vd.tensors.values()):
            raise UserError(f"entries of view {vd.view} contain NaN descriptors; recompute them")
    dims = {vd.view: {L: t.shape[1] for L, t in vd.tensors.items()} for vd in views}
    if len({tuple(sorted(d.items())) for d in dims.values()}) != 1:
        raise UserError(
            f"descriptor dimensions differ between views {dims}; align entries of the same backbone and layers"
        )


def load_descriptors(cfg: Config, store: CacheStore, kind: str) -> Inputs:
    """The query and gallery views' descriptors (and the training views', if given) as tensors, of
    the layers ``kind`` names: ``layer``, ``layers`` or ``layer+layers``."""
    qv, gv = query_gallery_views(cfg)
    all_layers = layer_names(cfg)
    layers = method_layers(cfg, all_layers)
    needed = {"layers": set(layers.stack), "layer": {layers.single}}.get(kind, {layers.single, *layers.stack})
    eval_views = {
        qv: _load_view(store, qv, _aliases(cfg, all_layers, cfg.align.query, qv, "query"), needed),
        gv: _load_view(store, gv, _aliases(cfg, all_layers, cfg.align.gallery, gv, "gallery"), needed),
    }
    _both_or_neither(cfg)
    q_role, g_role = pair_roles(qv, gv)
    if cfg.align.train_drone:
        given = {
            "dro": (cfg.align.train_drone, "train_drone"),
            "sat": (cfg.align.train_satellite, "train_satellite"),
        }
        train = {
            r: _load_view(store, f"train_{r}", _aliases(cfg, all_layers, a, f"train_{r}", w), needed)
            for r, (a, w) in given.items()
        }
    else:
        train = {BRANCH[q_role]: eval_views[qv], BRANCH[g_role]: eval_views[gv]}
    _check_descriptors([*eval_views.values(), *train.values()])
    return Inputs(
        eval=eval_views,
        train=train,
        roles={qv: q_role, gv: g_role},
        key={
            "train": {r: vd.keys for r, vd in sorted(train.items())},
            "eval": {v: vd.keys for v, vd in eval_views.items()},
        },
        sizes={"in_dim": train["sat"].tensors[layers.single if layers.single in needed else layers.stack[0]].shape[1]},
        layers=layers,
        transductive=not cfg.align.train_drone,
        parents={
            f"parent:{vd.entries[L].manifest.alias or L}": vd.entries[L].key
            for vd in eval_views.values()
            for L in vd.entries
        },
    )


# -------------------------------------------------------------------------------------- conv maps


def _single(cfg: Config, explicit: list[str], view: str, what: str) -> str:
    if not explicit:
        return extracted_alias(cfg, view, cfg.backbone.layers[-1])
    if len(explicit) != 1:
        raise UserError(f"align.{what} must name one conv-map entry for CVFT, got {len(explicit)}")
    return explicit[0]


def _pair(store: CacheStore, ground: str, aerial: str, what: str) -> tuple[Entry, Entry]:
    g, a = store.open(ground), store.open(aerial)
    for e in (g, a):
        if len(e.shape) != 3:
            raise UserError(
                f"entry {e.label} holds descriptors of shape {list(e.shape)}; CVFT needs VGG16 conv maps [C, h, w] "
                "(extract with backbone.name=vgg16 pooling.name=none)"
            )
    if g.shape[0] != a.shape[0]:
        raise UserError(
            f"ground maps have {g.shape[0]} channels but aerial maps {a.shape[0]}; extract both at the same layer"
        )
    if g.count != a.count:
        raise UserError(
            f"{what}: ground entry {g.label} has {g.count} rows but aerial entry {a.label} has {a.count}; "
            "CVFT needs one aerial image per ground image (row i = pair i)"
        )
    return g, a


def load_conv_maps(cfg: Config, store: CacheStore) -> Inputs:
    """The ground and aerial conv-map entries to align (and to train on), checked as pairs."""
    qv, gv = query_gallery_views(cfg)
    q_role, g_role = pair_roles(qv, gv)
    ground_view, aerial_view = (qv, gv) if q_role == "ground" else (gv, qv)
    eval_g, eval_a = _pair(
        store,
        _single(cfg, cfg.align.query if ground_view == qv else cfg.align.gallery, ground_view, "query"),
        _single(cfg, cfg.align.gallery if aerial_view == gv else cfg.align.query, aerial_view, "gallery"),
        "evaluation pairs",
    )
    _both_or_neither(cfg, " (ground maps)", " (aerial maps)")
    if cfg.align.train_drone:
        train_g, train_a = _pair(
            store,
            _single(cfg, cfg.align.train_drone, "", "train_drone"),
            _single(cfg, cfg.align.train_satellite, "", "train_satellite"),
            "training pairs",
        )
    else:
        train_g, train_a = eval_g, eval_a
    first = train_g.manifest.shards[0] if train_g.manifest.shards else None
    return Inputs(
        eval={ground_view: MapView(ground_view, eval_g), aerial_view: MapView(aerial_view, eval_a)},
        train={"ground": MapView("train_ground", train_g), "aerial": MapView("train_aerial", train_a)},
        roles={ground_view: "ground", aerial_view: "aerial"},
        key={"train": [train_g.key, train_a.key], "eval": [eval_g.key, eval_a.key]},
        # Shuffle shard-wise (a few shards at a time), so training never needs the entry in memory.
        sizes={"shard_rows": (first.row_end - first.row_start) if first else 0},
        transductive=not cfg.align.train_drone,
    )


def load_inputs(cfg: Config, store: CacheStore, kind: str) -> Inputs:
    """The inputs of a method that reads ``kind`` (:data:`align.registry.INPUT_KINDS`, ``none`` aside)."""
    return load_conv_maps(cfg, store) if kind == "conv_maps" else load_descriptors(cfg, store, kind)
