"""CVFT on cached VGG16 conv maps: train the transport head with ground–aerial pairs, cache descriptors.

Methods: ``cvft`` (feature transport), ``vgg_conv`` (the same heads without transport) and
``vgg_gp`` (global max pooling, nothing to train). Inputs are conv-map entries ([C, h, w] per row)
of one ground view and one aerial view whose row i is pair i. Training reads random batches from
the cache shards (a CVUSA-size entry is tens of GB and never loaded whole); evaluation streams the
entries shard by shard.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from align.checkpoints import record_model_files, save_checkpoint
from cache.keys import content_key
from cache.shards import read_shard_rows
from cache.store import CacheStore, Entry
from configs.atomic import write_text_atomic
from configs.errors import UserError
from configs.naming import aligned_alias, extracted_alias, query_gallery_views
from configs.run import RunFolder
from configs.schema import Config

CVFT_METHODS = ("cvft", "vgg_conv", "vgg_gp")


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


def run_cvft(cfg: Config, store: CacheStore, run: RunFolder, *, log: Callable | None = None) -> list:
    """Train ``cfg.align.method`` (cvft | vgg_conv | vgg_gp) and cache the descriptors of both views."""
    from align.runner import AlignedEntry, _dataclass_from_params, _StateFile, publish_model
    from align.train_cvft import CVFTConfig, encode_aerial, encode_ground, train_cvft
    from configs.devices import resolve_device

    method = cfg.align.method
    qv, gv = query_gallery_views(cfg)
    ground_view, aerial_view = (qv, gv) if "aerial" not in qv and "sat" not in qv else (gv, qv)
    eval_g, eval_a = _pair(
        store,
        _single(cfg, cfg.align.query if ground_view == qv else cfg.align.gallery, ground_view, "query"),
        _single(cfg, cfg.align.gallery if aerial_view == gv else cfg.align.query, aerial_view, "gallery"),
        "evaluation pairs",
    )
    if bool(cfg.align.train_drone) != bool(cfg.align.train_satellite):
        raise UserError(
            "set both align.train_drone (ground maps) and align.train_satellite (aerial maps), or neither"
        )
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
    # Shuffle shard-wise (a few shards at a time), so training never needs the entry in memory.
    shard_rows = (first.row_end - first.row_start) if first else 0
    ccfg = _dataclass_from_params(CVFTConfig, cfg.align.params, variant=method, shard_rows=shard_rows)
    if ccfg.variant != method:
        raise UserError(
            f"align.params.variant={ccfg.variant!r} contradicts align.method={method!r}; drop the param"
        )
    run_spec = {
        "method": method,
        "params": asdict(ccfg),
        "seed": cfg.seed,
        "train": [train_g.key, train_a.key],
        "eval": [eval_g.key, eval_a.key],
    }
    run_digest = content_key({"kind": "alignment-run", **run_spec})
    views = {ground_view: eval_g, aerial_view: eval_a}
    specs = {
        v: {"kind": "aligned", "run": run_digest, "view": v, "parents": [e.key]} for v, e in views.items()
    }
    keys = {v: content_key(s) for v, s in specs.items()}
    aliases = {v: aligned_alias(cfg, v) for v in views}
    run.record(
        alignment={"method": method, "run_digest": run_digest, "transductive": not cfg.align.train_drone}
    )
    model_dir = store.root / "models" / run_digest
    if all(store.has(k) for k in keys.values()):
        for v in views:
            store.set_alias(aliases[v], keys[v])
        run.record_keys({aliases[v]: keys[v] for v in views})
        publish_model(model_dir, run)
        return [AlignedEntry(v, keys[v], aliases[v], views[v].count, True) for v in views]

    device = resolve_device(cfg.align.device, "align.device")
    state = _StateFile(model_dir, method)
    history: list[dict] = []

    def on_epoch(record: dict) -> None:
        history.append({k: v for k, v in record.items() if isinstance(v, (int, float, str))})
        if log:
            log(
                f"align {method}",
                int(record.get("epoch", 0)),  # already counts completed epochs
                ccfg.epochs,
                {k: record[k] for k in ("loss", "pairs_per_s") if k in record},
            )

    model, _ = train_cvft(
        EntryRows(train_g),
        EntryRows(train_a),
        train_g.count,
        ccfg,
        seed=cfg.seed,
        device=device,
        on_epoch=on_epoch,
        state=state.load(),
        save_state=lambda s: state.save(0, s),
    )
    save_checkpoint(
        model_dir,
        method,
        model,
        {
            "method": method,
            "cvft": asdict(ccfg),
            "model": getattr(model, "config", {}),
            "run_digest": run_digest,
        },
    )
    write_text_atomic(model_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    # The cache keeps the model (its source of truth); the run folder gets links to it.
    record_model_files(model_dir, [f"{method}.safetensors", f"{method}.json", "history.jsonl"])
    publish_model(model_dir, run)
    out = []
    with torch.no_grad():
        for v, e in views.items():
            blocks = (d for d, _, _ in e.iter_chunks())
            d = (encode_ground if v == ground_view else encode_aerial)(model, blocks).numpy()
            entry = store.put_arrays(
                specs[v],
                d,
                e.labels(),
                e.names(),
                alias=aliases[v],
                parents=[e.key],
                extra={"view": v, "method": method, "run_digest": run_digest},
                dtype="float32",
            )
            out.append(AlignedEntry(v, entry.key, aliases[v], entry.count, False))
    state.clear()
    run.record_keys({a.alias: a.key for a in out})
    return out
