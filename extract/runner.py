"""The extraction runner: image lists → backbone (several layers, one pass) → pooling → cache entries.

One entry per (image list, layer). Entries already in the cache are reused without loading the
backbone; an interrupted extraction resumes from its last complete shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cache.keys import content_key, image_list_digest, weights_digest
from cache.store import CacheStore, check_alias
from configs.errors import UserError
from configs.naming import dataset_views, extracted_alias
from configs.schema import Config
from extract.datasets import ImageList, list_images

ProgressFn = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class ExtractedEntry:
    view: str
    layer: int | str
    key: str
    alias: str
    count: int
    reused: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but CUDA is not available; use device=auto or cpu")
    return torch.device(name)


def compute_dtype(cfg: Config, device: torch.device) -> str:
    if cfg.backbone.dtype != "auto":
        return cfg.backbone.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def dataset_root(cfg: Config, store: CacheStore) -> Path:
    """The dataset folder; the synthetic layout is generated (once, deterministically) on demand."""
    ds = cfg.dataset
    if ds.layout == "synthetic":
        from extract.synthetic import make_synthetic_u1652, synthetic_summary

        params = {
            "n_locations": ds.synthetic.n_locations,
            "n_distractors": ds.synthetic.n_distractors,
            "views_per_location": ds.synthetic.views_per_location,
            "size": ds.synthetic.size,
            "seed": ds.synthetic.seed,
        }
        root = (
            Path(ds.root)
            if ds.root
            else store.root / "datasets" / f"synthetic-u1652-{content_key(params)[:16]}"
        )
        done = synthetic_summary(root)
        # Regenerating would give the same bytes but new mtimes, hence new cache keys: keep a finished copy.
        if done is None or any(done.get(k) != v for k, v in params.items()) or done.get("train_locations", 0):
            make_synthetic_u1652(root, **params)
        return root
    if not ds.root:
        raise UserError(
            f"dataset.root is not set for layout {ds.layout!r}; pass root=PATH (or dataset.root=PATH)"
        )
    return Path(ds.root)


def image_lists(cfg: Config, store: CacheStore) -> list[ImageList]:
    root = dataset_root(cfg, store)
    layout = "u1652" if cfg.dataset.layout == "synthetic" else cfg.dataset.layout
    if layout == "folder":
        return [
            list_images("folder", root, v, split=cfg.dataset.split) for v in (cfg.dataset.views or ["images"])
        ]
    return [list_images(layout, root, v, split=cfg.dataset.split) for v in dataset_views(cfg)]


def entry_alias(cfg: Config, view: str, layer: int | str, n_views: int) -> str:
    return check_alias(extracted_alias(cfg, view, layer, n_views))


def backbone_identity(cfg: Config, store: CacheStore) -> dict:
    """What identifies the network in a key: variant, weights digest (or random-init seed), overrides."""
    b = cfg.backbone
    if b.weights:
        p = Path(b.weights)
        if not p.exists():
            raise UserError(f"backbone weights {p} do not exist; set backbone.weights=PATH to a checkpoint")
        digest = weights_digest(p, store.memo)
    else:
        digest = f"random-init:seed={b.seed}"
    return {"name": b.name, "weights": digest, "arch": dict(sorted(b.arch.items()))}


def entry_spec(
    cfg: Config, backbone: dict, images: ImageList, layer: int | str, dtype_compute: str, digest: str
) -> dict:
    return {
        "kind": "descriptors",
        "backbone": backbone,
        "compute_dtype": dtype_compute,
        "preprocess": {
            "resize": cfg.preprocess.resize,
            "mean": cfg.preprocess.mean,
            "std": cfg.preprocess.std,
        },
        "layer": layer,
        "facet": cfg.backbone.facet,
        "pooling": {
            "name": cfg.pooling.name,
            "p": cfg.pooling.p,
            "eps": cfg.pooling.eps,
            "local_norm": cfg.pooling.local_norm,
        },
        "storage_dtype": cfg.extract.dtype,
        "images": {"digest": digest, "count": len(images), "strict": cfg.dataset.strict_digest},
    }


class _Model:
    """The loaded backbone behind one uniform call: images → {layer: pooled descriptors}."""

    def __init__(self, cfg: Config, device: torch.device, dtype: str) -> None:
        from extract.dinov3 import load_dinov3
        from extract.pooling import pool

        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self._pool = pool
        self.net = load_dinov3(
            cfg.backbone.name, cfg.backbone.weights, seed=cfg.backbone.seed, arch_overrides=cfg.backbone.arch or None
        )
        bad = [L for L in cfg.backbone.layers if not 0 <= L < self.net.depth]
        if bad:
            raise UserError(
                f"backbone.layers {bad} out of range for {cfg.backbone.name} (blocks 0..{self.net.depth - 1})"
            )
        # The compute dtype is part of the cache key, so the network must run exactly in it.
        self.net.cuda_autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        self.net.eval().to(device)
        self.num_prefix_tokens = self.net.num_prefix_tokens
        self.hidden_size = self.net.hidden_size
        self._forward = torch.compile(self.net) if cfg.backbone.compile else self.net

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        cpu_bf16 = self.device.type == "cpu" and self.dtype == "bfloat16"
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
            tokens = self._forward(x, list(self.cfg.backbone.layers), facet=self.cfg.backbone.facet)
        p = self.cfg.pooling
        return {
            L: self._pool(t, self.num_prefix_tokens, p.name, p=p.p, eps=p.eps, local_norm=p.local_norm).float()
            for L, t in tokens.items()
        }


def run_extraction(
    cfg: Config, store: CacheStore, *, progress: ProgressFn | None = None
) -> list[ExtractedEntry]:
    """Extract every view of ``cfg.dataset`` at every layer of ``cfg.backbone`` into the cache."""
    if not cfg.backbone.layers:
        raise UserError(
            "backbone.layers is empty; give at least one block index, e.g. backbone.layers=[26,28]"
        )
    if cfg.extract.shard_rows <= 0 or cfg.extract.batch_size <= 0:
        raise UserError("extract.shard_rows and extract.batch_size must be positive")
    lists = image_lists(cfg, store)
    device = resolve_device(cfg.backbone.device)
    dtype = compute_dtype(cfg, device)
    ident = backbone_identity(cfg, store)
    model: _Model | None = None
    out: list[ExtractedEntry] = []
    layers = list(dict.fromkeys(cfg.backbone.layers))
    for images in lists:
        digest = image_list_digest(images.root, images.names, strict=cfg.dataset.strict_digest)
        specs = {L: entry_spec(cfg, ident, images, L, dtype, digest) for L in layers}
        keys = {L: content_key(s) for L, s in specs.items()}
        aliases = {L: entry_alias(cfg, images.view, L, len(lists)) for L in layers}
        missing = [L for L in layers if not store.has(keys[L])]
        for L in layers:
            if L not in missing:
                store.set_alias(aliases[L], keys[L])
        computed: set[int] = set()
        if missing:
            if model is None:
                model = _Model(cfg, device, dtype)
            computed = _extract_list(
                cfg,
                store,
                model,
                images,
                {L: keys[L] for L in missing},
                {L: specs[L] for L in missing},
                aliases,
                progress,
            )
        for L in layers:
            out.append(ExtractedEntry(images.view, L, keys[L], aliases[L], len(images), L not in computed))
    return out


def _extract_list(
    cfg: Config,
    store: CacheStore,
    model: _Model,
    images: ImageList,
    keys: dict[int, str],
    specs: dict[int, dict],
    aliases: dict[int, str],
    progress: ProgressFn | None,
) -> set[int]:
    """Extract the layers in ``keys`` for one image list; returns the layers this process computed."""
    from contextlib import ExitStack

    from extract.images import ImageDataset, iter_batches

    desc = f"extract {images.view}"
    with ExitStack() as stack:
        # Sorted order: two processes locking several keys can never deadlock.
        for L in sorted(keys, key=lambda L: keys[L]):
            stack.enter_context(
                store.lock(
                    keys[L],
                    on_wait=lambda: (
                        progress and progress(f"waiting for another extractor of {images.view}", 0, 0)
                    ),
                )
            )
        todo = {L: k for L, k in keys.items() if not store.has(k)}  # another process may have finished
        for L, k in keys.items():
            if L not in todo:
                store.set_alias(aliases[L], k)
        if not todo:
            return set()
        dim = int(model.hidden_size)
        writers = {
            L: store.writer(
                k, specs[L], shape=(dim,), dtype=cfg.extract.dtype, shard_rows=cfg.extract.shard_rows
            )
            for L, k in todo.items()
        }
        start = min(w.rows_done for w in writers.values())
        n = len(images)
        bs = cfg.extract.batch_size
        # Batches stay aligned to multiples of the batch size from row 0, so a resumed run computes
        # exactly the batches an uninterrupted one does (batch composition can change float results).
        first = (start // bs) * bs
        dataset = ImageDataset(
            images, resize=cfg.preprocess.resize, mean=cfg.preprocess.mean, std=cfg.preprocess.std
        )
        subset = torch.utils.data.Subset(dataset, range(first, n))
        labels = np.asarray(images.labels, dtype=np.int64)
        done = start
        if progress:
            progress(desc, done, n)
        for idx, x in iter_batches(
            subset, batch_size=bs, num_workers=cfg.extract.num_workers, pin_memory=model.device.type == "cuda"
        ):
            pooled = model(x)
            rows = idx.numpy()  # the dataset returns global row indices, also through Subset
            for L, w in writers.items():
                keep = rows >= w.next_row
                if keep.any():
                    sel = rows[keep]
                    w.add(
                        pooled[L][torch.from_numpy(keep)].cpu().numpy(),
                        labels[sel],
                        [images.names[i] for i in sel],
                    )
            done = int(rows[-1]) + 1 if len(rows) else done
            if progress:
                progress(desc, done, n)
        for L, w in writers.items():
            w.finish(alias=aliases[L], extra={"view": images.view, "root": str(images.root), "layer": L})
        return set(writers)
