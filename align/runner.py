"""The alignment stage: read cached descriptors, train a method, write aligned descriptors back.

Aligned entries are cache entries too. Their key chains to the parent entries' keys and the
alignment run's digest (method, its parameters, the seed), so rerunning the same alignment reuses
them and a change of any input makes new ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from align.checkpoints import save_checkpoint
from cache.keys import content_key
from cache.store import CacheStore, Entry
from configs.errors import UserError
from configs.naming import aligned_alias, extracted_alias, query_gallery_views
from configs.run import RunFolder
from configs.schema import Config

LogFn = Callable[[str, int, int, dict], None]  # (description, epoch, epochs, losses)


@dataclass
class AlignedEntry:
    view: str
    key: str
    alias: str
    count: int
    reused: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"align.device={name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def input_aliases(cfg: Config) -> dict[str, list[str]]:
    """{view: [entry alias per layer]} from align.query/align.gallery or the extraction's names."""
    qv, gv = query_gallery_views(cfg)
    layers = (
        cfg.align.isms.layers if cfg.align.method == "isms" and cfg.align.isms.layers else cfg.backbone.layers
    )
    q = list(cfg.align.query) or [extracted_alias(cfg, qv, L) for L in layers]
    g = list(cfg.align.gallery) or [extracted_alias(cfg, gv, L) for L in layers]
    return {qv: q, gv: g}


def _load_view(
    store: CacheStore, aliases: list[str]
) -> tuple[list[Entry], list[torch.Tensor], np.ndarray, list[str]]:
    entries = [store.open(a) for a in aliases]
    counts = {e.count for e in entries}
    if len(counts) != 1:
        raise UserError(
            f"entries {', '.join(aliases)} have different row counts {sorted(counts)}; they must describe the same images"
        )
    tensors, labels, names = [], None, None
    for e in entries:
        d, lab, nm = e.read()
        if names is not None and nm != names:
            raise UserError(
                f"entries {aliases[0]} and {e.label} list different images; align layers of one image list"
            )
        tensors.append(torch.from_numpy(d))
        labels, names = lab, nm
    assert labels is not None and names is not None
    return entries, tensors, labels, names


def run_alignment(
    cfg: Config, store: CacheStore, run: RunFolder, *, log: LogFn | None = None
) -> list[AlignedEntry]:
    """Train ``cfg.align.method`` on cached descriptors and cache the aligned descriptors."""
    method = cfg.align.method
    if method == "identity":
        return []
    if method not in ("isms",):
        raise UserError(f"align.method={method!r} is not available in this stage yet; use isms or identity")
    views = input_aliases(cfg)
    loaded = {v: _load_view(store, a) for v, a in views.items()}
    parent_keys = {v: [e.key for e in loaded[v][0]] for v in views}
    params = asdict(cfg.align.isms)
    run_spec = {"method": method, "params": params, "seed": cfg.seed, "parents": parent_keys}
    run_digest = content_key({"kind": "alignment-run", **run_spec})
    specs = {v: {"kind": "aligned", "run": run_digest, "view": v, "parents": parent_keys[v]} for v in views}
    keys = {v: content_key(s) for v, s in specs.items()}
    aliases = {v: aligned_alias(cfg, v) for v in views}
    run.record_keys({f"parent:{a}": e.key for v in views for a, e in zip(views[v], loaded[v][0])})
    if all(store.has(k) for k in keys.values()):
        for v in views:
            store.set_alias(aliases[v], keys[v])
        run.record_keys({aliases[v]: keys[v] for v in views})
        return [AlignedEntry(v, keys[v], aliases[v], loaded[v][0][0].count, True) for v in views]

    from align.isms import ISMSConfig, isms_config_dict, isms_input, train_isms

    device = resolve_device(cfg.align.device)
    dims = {v: sum(t.shape[1] for t in loaded[v][1]) for v in views}
    if len(set(dims.values())) != 1:
        raise UserError(
            f"query and gallery inputs have different dimensions {dims}; align entries of the same layers"
        )
    inputs = {v: isms_input(loaded[v][1]) for v in views}
    icfg = ISMSConfig(**{k: v for k, v in params.items() if k != "layers"})
    history: list[dict] = []

    def on_epoch(epoch: int, losses: dict[str, float]) -> None:
        history.append({"epoch": epoch, **losses})
        if log:
            log(f"align {method}", epoch + 1, icfg.epochs, losses)

    model = train_isms(
        torch.cat(list(inputs.values())), icfg, seed=cfg.seed, device=str(device), on_epoch=on_epoch
    )
    config = {**isms_config_dict(model, icfg), "run_digest": run_digest, "parents": parent_keys}
    save_checkpoint(run.path, "model", model, config)
    save_checkpoint(store.root / "models" / run_digest, "model", model, config)
    (run.path / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    out = []
    with torch.no_grad():
        for v in views:
            d = model.encode(inputs[v].to(device)).cpu().numpy()
            _, _, labels, names = loaded[v]
            entry = store.put_arrays(
                specs[v],
                d,
                labels,
                names,
                alias=aliases[v],
                parents=parent_keys[v],
                extra={"view": v, "method": method, "run_digest": run_digest},
                dtype="float32",
            )
            out.append(AlignedEntry(v, entry.key, aliases[v], entry.count, False))
    run.record_keys({a.alias: a.key for a in out})
    return out
