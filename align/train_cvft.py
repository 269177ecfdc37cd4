"""Train CVFT (or its VGG_conv baseline) on cached VGG16 conv5_3 maps streamed in batches.

The maps of a CVUSA-size training set do not fit in memory (35,532 pairs × ~0.5 MB of float16 maps
per view), so the trainer never holds them: it asks two callables for one batch at a time,
``ground_maps_fn(idx)`` and ``aerial_maps_fn(idx)`` with ``idx`` an int64 array of pair rows, sorted
ascending (the loss does not depend on the order within a batch, and sorted reads suit HDF5).

Shuffling is shard-wise so that a reader backed by shards touches few of them at a time: each epoch
the shard order is permuted, consecutive groups of ``buffer_shards`` shards form a window, and rows
are permuted within each window. A batch therefore spans at most two windows. With
``shard_rows=0`` the whole set is one shard (a full permutation). Everything random — the order,
the map dropout masks — is derived from ``(seed, epoch)``, so a run resumed from the state saved
after epoch ``e`` is identical to an uninterrupted one.

Defaults follow CVFT's ``train_cvusa.py``: Adam(1e-5, β = 0.9/0.999), batch 32, loss weight 10, 10
epochs, dropout keep-probability 0.8 on conv5_3 (here applied to the cached maps, the last of the
reference's dropouts), last incomplete batch dropped. The fc layer's L2 regularizer in the
reference is never added to its loss, so there is no weight decay. One deliberate difference: the
reference also fine-tunes conv4_1…conv5_3 of both VGG16s; on cached maps the backbone is frozen.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from cvgl.align.cvft import VGGGP, build_model, encode_blocks, soft_margin_triplet_loss
from cvgl.core.errors import UserError
from torch import nn

MapsFn = Callable[[np.ndarray], "torch.Tensor | np.ndarray"]

# Fields that do not change the numbers of a run: a resumed run may change them freely.
_RESUMABLE_FIELDS = {"epochs", "prefetch"}


@dataclass
class CVFTConfig:
    """Hyperparameters of CVFT training; defaults are the reference code's (``train_cvusa.py``)."""

    variant: str = "cvft"  # "cvft" | "vgg_conv" | "vgg_gp"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    loss_weight: float = 10.0
    map_dropout: float = 0.2  # 1 − keep_prob (0.8)
    channels: int = 64
    sinkhorn_iters: int = 20
    logit_scale: float = -100.0
    bias_init: str = "reference"  # "reference" (identity bias, as published) | "uniform"
    shard_rows: int = 0  # rows per cache shard; 0 = shuffle the whole set at once
    buffer_shards: int = 4  # shards whose rows are shuffled together
    drop_last: bool = True
    prefetch: bool = True  # load the next batch in a thread while this one trains

    def __post_init__(self) -> None:
        if self.variant not in ("cvft", "vgg_conv", "vgg_gp"):
            raise UserError(f"unknown CVFT variant {self.variant!r}; use cvft, vgg_conv or vgg_gp")
        if self.bias_init not in ("reference", "uniform"):
            raise UserError(f"unknown bias_init {self.bias_init!r}; use reference or uniform")
        if self.batch_size < 2:
            raise UserError(f"batch_size={self.batch_size} leaves no in-batch negatives; use at least 2")
        if self.epochs < 0 or self.lr <= 0:
            raise UserError(f"epochs must be ≥ 0 and lr > 0 (got {self.epochs}, {self.lr}); fix the config")
        if not 0.0 <= self.map_dropout < 1.0:
            raise UserError(f"map_dropout={self.map_dropout} must be in [0, 1); fix the config")
        if self.shard_rows < 0 or self.buffer_shards < 1:
            raise UserError("shard_rows must be ≥ 0 and buffer_shards ≥ 1; fix the config")


def epoch_order(n_pairs: int, shard_rows: int, buffer_shards: int, rng: np.random.Generator) -> np.ndarray:
    """Shard-wise shuffled row order: shards permuted, rows permuted within windows of shards."""
    if shard_rows <= 0 or shard_rows >= n_pairs:
        return rng.permutation(n_pairs)
    n_shards = -(-n_pairs // shard_rows)
    shard_rank = np.empty(n_shards, dtype=np.int64)
    shard_rank[rng.permutation(n_shards)] = np.arange(n_shards)
    rows = np.arange(n_pairs)
    window = shard_rank[rows // shard_rows] // buffer_shards
    # Sort by window, then by a random key: a uniform permutation inside each window.
    return rows[np.lexsort((rng.random(n_pairs), window))]


def _epoch_rngs(seed: int, epoch: int, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, epoch])
    gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
    return rng, gen


def _as_maps(x: torch.Tensor | np.ndarray, n: int, view: str, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 4 or t.shape[0] != n:
        raise UserError(
            f"{view}_maps_fn returned shape {list(t.shape)} for {n} rows; it must return [n, C, H, W] maps"
        )
    return t.to(device=device, dtype=torch.float32, non_blocking=True)


def _dropout(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Inverted dropout with an explicit generator (``F.dropout`` cannot take one)."""
    if p == 0.0:
        return x
    keep = torch.rand(x.shape, generator=gen, device=x.device) >= p
    return x * keep / (1.0 - p)


def _check_resume(state: dict[str, Any], cfg: CVFTConfig, seed: int, n_pairs: int) -> None:
    saved = state.get("config", {})
    for f in fields(cfg):
        if f.name in _RESUMABLE_FIELDS:
            continue
        if saved.get(f.name) != getattr(cfg, f.name):
            raise UserError(
                f"cannot resume: state was trained with {f.name}={saved.get(f.name)!r}, config has "
                f"{getattr(cfg, f.name)!r}; use the original config or start fresh"
            )
    if state.get("seed") != seed or state.get("n_pairs") != n_pairs:
        raise UserError(
            f"cannot resume: state has seed={state.get('seed')}, n_pairs={state.get('n_pairs')}, "
            f"run has seed={seed}, n_pairs={n_pairs}; use the same data and seed"
        )


def train_cvft(
    ground_maps_fn: MapsFn,
    aerial_maps_fn: MapsFn,
    n_pairs: int,
    cfg: CVFTConfig,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train a CVFT head on pairs ``0 … n_pairs−1`` (ground row i matches aerial row i).

    ``*_maps_fn(idx)`` returns conv5_3 maps ``[len(idx), 512, h, w]`` (tensor or array, any float
    dtype). ``state`` (from ``save_state``) resumes after its last completed epoch; ``save_state`` gets
    a self-contained dict after every epoch (tensors, numbers, strings only: ``torch.save`` it and read
    it back with ``weights_only=True``). ``on_epoch`` gets each epoch's record. Returns
    ``(model, history)`` with one record per completed epoch (``epoch``, ``loss``, ``steps``,
    ``pairs``, ``seconds``, ``pairs_per_s``). ``vgg_gp`` has no parameters: nothing is trained.
    """
    device = torch.device(device)
    if n_pairs < 2:
        raise UserError(f"n_pairs={n_pairs}: training needs at least 2 pairs; check the training split")
    probe = np.zeros(1, dtype=np.int64)
    g0 = _as_maps(ground_maps_fn(probe), 1, "ground", device)
    a0 = _as_maps(aerial_maps_fn(probe), 1, "aerial", device)
    if g0.shape[1] != a0.shape[1]:
        raise UserError(f"ground maps have {g0.shape[1]} channels, aerial {a0.shape[1]}; use the same layer")
    model = build_model(
        cfg.variant,  # type: ignore[arg-type]
        in_channels=int(a0.shape[1]),
        channels=cfg.channels,
        aerial_map_size=(int(a0.shape[2]), int(a0.shape[3])),
        seed=seed,
        sinkhorn_iters=cfg.sinkhorn_iters,
        logit_scale=cfg.logit_scale,
        bias_init=cfg.bias_init,  # type: ignore[arg-type]
    ).to(device)
    if isinstance(model, VGGGP):
        return model.eval(), []

    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
    )
    history: list[dict[str, Any]] = []
    start = 0
    if state is not None:
        _check_resume(state, cfg, seed, n_pairs)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history = [dict(r) for r in state.get("history", [])]
        start = int(state["epoch"])

    b = cfg.batch_size
    n_used = (n_pairs // b) * b if cfg.drop_last else n_pairs
    if n_used == 0:
        raise UserError(f"{n_pairs} pairs make no full batch of {b}; lower batch_size or set drop_last=False")
    pool = ThreadPoolExecutor(max_workers=1) if cfg.prefetch else None

    def load(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            _as_maps(ground_maps_fn(idx), len(idx), "ground", device),
            _as_maps(aerial_maps_fn(idx), len(idx), "aerial", device),
        )

    try:
        for epoch in range(start, cfg.epochs):
            model.train()
            rng, gen = _epoch_rngs(seed, epoch, device)
            order = epoch_order(n_pairs, cfg.shard_rows, cfg.buffer_shards, rng)[:n_used]
            # A final batch of one pair has no negatives: fold it into the previous one.
            bounds = list(range(0, n_used, b))
            if len(bounds) > 1 and n_used - bounds[-1] < 2:
                bounds.pop()
            batches = [np.sort(order[s:e]) for s, e in zip(bounds, bounds[1:] + [n_used])]
            t0 = time.perf_counter()
            total, steps = 0.0, 0
            pending = pool.submit(load, batches[0]) if pool else None
            for k, idx in enumerate(batches):
                if pool:
                    g, a = pending.result()  # type: ignore[union-attr]
                    if k + 1 < len(batches):
                        pending = pool.submit(load, batches[k + 1])
                else:
                    g, a = load(idx)
                g = _dropout(g, cfg.map_dropout, gen)
                a = _dropout(a, cfg.map_dropout, gen)
                gd, ad = model(g, a)
                loss = soft_margin_triplet_loss(ad, gd, cfg.loss_weight)
                if not torch.isfinite(loss):
                    raise UserError(
                        f"non-finite loss at epoch {epoch + 1}, step {steps + 1}; check the cached maps "
                        "for NaN/Inf or lower lr"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch + 1,
                "loss": total / steps,
                "steps": steps,
                "pairs": n_used,
                "seconds": seconds,
                "pairs_per_s": n_used / seconds if seconds > 0 else math.inf,
            }
            history.append(record)
            if on_epoch is not None:
                on_epoch(dict(record))
            if save_state is not None:
                save_state(
                    {
                        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                        "optimizer": _to_cpu(copy.deepcopy(opt.state_dict())),
                        "epoch": epoch + 1,
                        # Every random stream is a function of (seed, epoch): these two are the RNG state.
                        "rng": {"scheme": "numpy default_rng([seed, epoch])", "seed": seed},
                        "seed": seed,
                        "n_pairs": n_pairs,
                        "config": asdict(cfg),
                        "model_config": dict(model.config),  # build_model(**it) rebuilds the head
                        "history": [dict(r) for r in history],
                    }
                )
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    return model.eval(), history


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def encode_ground(
    model: nn.Module,
    maps: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    batch_size: int = 256,
) -> torch.Tensor:
    """Ground descriptors ``[N, dim]`` (float32, CPU) from conv5_3 maps, one array or blocks of them."""
    model.eval()
    return encode_blocks(model.ground, maps, batch_size, _model_device(model))


def encode_aerial(
    model: nn.Module,
    maps: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    batch_size: int = 256,
) -> torch.Tensor:
    """Aerial descriptors ``[N, dim]`` (float32, CPU) from conv5_3 maps, one array or blocks of them."""
    model.eval()
    return encode_blocks(model.aerial, maps, batch_size, _model_device(model))


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
