"""Training loop of GeoAlign stream 1 on descriptor tensors, and the loop (:func:`fit`) the other
descriptor trainers share; files and the command line are the align stage's.

One step = a batch of ``batch_size`` satellites plus ``batch_size · dro_num`` drones drawn uniformly at
random from all drones; the Sinkhorn plan is computed between the two inside the batch. With the
release settings (batch 701 = every University-1652 training satellite) that is a full-batch
transport problem: all satellites against a fresh random drone batch each step, one step per epoch,
exactly the shape of GeoAlign's ``U1652_Random_drone`` loader (``drop_last=True``). We draw drones
without looking at labels (GeoAlign's loader samples a random *class* first, which peeks at the
labels; uniform drone sampling is the same in expectation on University-1652, where every building
has 54 drones, and stays unsupervised).

Determinism: all randomness (initialization, batch order, drone draws, gate noise, dropout) comes
from ``seed`` through a private generator and a forked global RNG, so the caller's RNG is untouched,
the same seed gives identical weights on CPU, and the state handed to ``save_state`` (model,
optimizer, schedule, both RNG states, history) resumes bit-for-bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol, TypeVar

import torch
from cvgl.align.geoalign import GeoAlignStream1, Stream1Config
from cvgl.align.losses import curriculum_eps, stream1_loss
from cvgl.align.optim import WarmupCosine, build_optimizer
from cvgl.align.training import OnEpoch, SaveState, TrainerOptions
from cvgl.core.errors import UserError
from torch import nn

STATE_FORMAT = "cvgl-align-train-state/1"
# Saving the resumable state copies and writes the parameters and both optimizer moments. At
# release size that is ~400 MB and took about as long as the training step itself, so a state this
# large is saved at most once per ``save_interval_s`` (and always at the end); a smaller state costs
# milliseconds and is saved every ``checkpoint_every`` epochs as before.
SMALL_STATE_BYTES = 32 * 2**20
# (model, logit scale, sat batch, dro batch, sat labels, dro labels, epoch) -> (loss, stats)
BatchLoss = Callable[..., tuple[torch.Tensor, dict[str, float]]]
# (satellite indices of the batch, generator) -> (drone indices, satellite rows to keep)
DrawDrones = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class LoopConfig(Protocol):
    epochs: int
    batch_size: int
    dro_num: int
    lr: float
    weight_decay: float
    warm_epochs: float
    scheduler: str
    optim: str
    clip_grad: float
    temperature_init: float


def check_inputs(
    sat: torch.Tensor,
    dro: torch.Tensor,
    dim: int,
    sat_labels: torch.Tensor | None,
    dro_labels: torch.Tensor | None,
    *,
    need_labels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Validate descriptor/label tensors; return float32 descriptors and int64 labels."""
    for name, x in (("satellite", sat), ("drone", dro)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise UserError(
                f"{name} descriptors must be a 2-D tensor [N, D], got {getattr(x, 'shape', type(x))}; pass one row per image"
            )
        if x.shape[1] != dim:
            raise UserError(
                f"{name} descriptors are {x.shape[1]}-d but the adapter expects out_dim={dim}; set out_dim={x.shape[1]} or use the matching layer"
            )
        if x.shape[0] < 2:
            raise UserError(
                f"need at least 2 {name} descriptors to train, got {x.shape[0]}; check the image list"
            )
        if not torch.isfinite(x).all():
            raise UserError(f"{name} descriptors contain NaN or Inf; re-extract or verify the cache entry")
    if need_labels and (sat_labels is None or dro_labels is None):
        raise UserError(
            "supervised training needs sat_labels and dro_labels; pass the building ids of both views"
        )
    out = []
    for name, lab, x in (("sat_labels", sat_labels, sat), ("dro_labels", dro_labels, dro)):
        if lab is None:
            out.append(None)
            continue
        lab = torch.as_tensor(lab)
        if lab.ndim != 1 or lab.shape[0] != x.shape[0]:
            raise UserError(
                f"{name} has shape {tuple(lab.shape)} but there are {x.shape[0]} descriptors; pass one label per row"
            )
        out.append(lab.long())
    return sat.float(), dro.float(), out[0], out[1]


def _clone(obj: Any) -> Any:
    """Deep copy of tensors in nested dicts/lists (state dicts alias live, in-place-updated tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return obj


def autocast(device: str, dtype: str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``dtype`` is ``bfloat16`` (parameters and optimizer stay float32)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


class SaveSchedule:
    """When :func:`fit` hands its state to ``save_state``: every ``every`` epochs while the state is
    smaller than :data:`SMALL_STATE_BYTES` or ``interval_s`` is 0; a larger state only once
    ``interval_s`` seconds have passed since the last save; always after the last epoch."""

    def __init__(self, state_bytes: int, every: int, interval_s: float, epochs: int) -> None:
        self.timed = interval_s > 0 and state_bytes >= SMALL_STATE_BYTES
        self.every = every
        self.interval_s = interval_s
        self.epochs = epochs
        self.last = time.monotonic()

    def due(self, done: int) -> bool:
        """Whether the state after ``done`` epochs is to be saved."""
        if done == self.epochs:
            return True
        if done % self.every:
            return False
        return not self.timed or time.monotonic() - self.last >= self.interval_s

    def saved(self) -> None:
        """Restart the interval (called once a save has been written)."""
        self.last = time.monotonic()


def uniform_drones(n_dro: int, per_sat: int) -> DrawDrones:
    """Unsupervised drone draw: ``len(sat_idx) · per_sat`` drones uniformly at random, no repeats."""

    def draw(sat_idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = sat_idx.numel() * per_sat
        if k <= n_dro:
            idx = torch.randperm(n_dro, generator=gen)[:k]
        else:
            idx = torch.randint(n_dro, (k,), generator=gen)
        return idx, torch.ones(sat_idx.numel(), dtype=torch.bool)

    return draw


def fit(
    *,
    method: str,
    model: nn.Module,
    cfg: LoopConfig,
    batch_loss: BatchLoss,
    draw_drones: DrawDrones,
    sat: torch.Tensor,
    dro: torch.Tensor,
    seed: int,
    device: str,
    sat_labels: torch.Tensor | None,
    dro_labels: torch.Tensor | None,
    on_epoch: OnEpoch | None,
    state: dict[str, Any] | None,
    checkpoint_every: int,
    save_state: SaveState | None,
    save_interval_s: float = 0.0,
    dtype: str = "float32",
) -> list[dict[str, float]]:
    """Shared epoch loop (stream 1, its supervised bound and EM-CVGL); returns the per-epoch history.

    Must run inside ``torch.random.fork_rng`` seeded by the caller (the model was built there).
    ``save_interval_s`` > 0 saves a large state at most that often (:class:`SaveSchedule`);
    ``dtype="bfloat16"`` runs the model under bf16 autocast (the losses stay float32).
    """
    if checkpoint_every < 1:
        raise UserError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    n_sat = sat.shape[0]
    bs = min(cfg.batch_size, n_sat)
    # drop_last, as GeoAlign's loader: every step has the same transport-problem size.
    steps = max(1, n_sat // bs)
    total = steps * cfg.epochs
    warm = int(round(cfg.warm_epochs * steps))
    log_scale = nn.Parameter(torch.tensor(math.log(cfg.temperature_init), device=device))
    params = list(model.parameters()) + [log_scale]
    opt = build_optimizer(cfg.optim, params, cfg.lr, cfg.weight_decay)
    sched = WarmupCosine(opt, warm, total, cfg.scheduler)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    start = 0
    if state is not None:
        if (
            not isinstance(state, dict)
            or state.get("format") != STATE_FORMAT
            or state.get("method") != method
        ):
            raise UserError(
                f"the resume state is not a {method} training state; pass the dict given to save_state by the same method"
            )
        if state.get("config") != asdict(cfg):  # type: ignore[call-overload]
            raise UserError(
                "the resume state was written with a different config; resume with the same config or start fresh"
            )
        model.load_state_dict(state["model"])
        with torch.no_grad():
            log_scale.copy_(state["log_scale"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["rng_gen"])
        torch.set_rng_state(state["rng_torch"])
        history = [dict(h) for h in state["history"]]
        start = int(state["epoch"])
    sat = sat.to(device)
    dro = dro.to(device)
    state_bytes = 3 * sum(p.numel() * p.element_size() for p in params)  # parameters + two moments
    schedule = SaveSchedule(state_bytes, checkpoint_every, save_interval_s, cfg.epochs)
    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(n_sat, generator=gen)
        totals: dict[str, float] = {}
        lr_used = sched.get_last_lr()[0]
        for s in range(steps):
            sat_idx = perm[s * bs : (s + 1) * bs]
            dro_idx, keep = draw_drones(sat_idx, gen)
            sat_idx = sat_idx[keep]
            if sat_idx.numel() < 2 or dro_idx.numel() < 2:
                continue  # BatchNorm needs two rows; only possible with a degenerate supervised draw
            sl = sat_labels[sat_idx].to(device) if sat_labels is not None else None
            dl = dro_labels[dro_idx].to(device) if dro_labels is not None else None
            with autocast(device, dtype):
                loss, stats = batch_loss(
                    model,
                    log_scale.exp().clamp(max=100.0),
                    sat[sat_idx.to(device)],
                    dro[dro_idx.to(device)],
                    sl,
                    dl,
                    epoch,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_value_(params, cfg.clip_grad)
            opt.step()
            sched.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
        record = {"epoch": float(epoch), "lr": lr_used, **{k: v / steps for k, v in totals.items()}}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, dict(record))
        done = epoch + 1
        if save_state is not None and schedule.due(done):
            save_state(
                done,
                _clone(
                    {
                        "format": STATE_FORMAT,
                        "method": method,
                        "epoch": done,
                        "config": asdict(cfg),  # type: ignore[call-overload]
                        "model": model.state_dict(),
                        "log_scale": log_scale.detach(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng_gen": gen.get_state(),
                        "rng_torch": torch.get_rng_state(),
                        "history": history,
                    }
                ),
            )
            schedule.saved()
    model.eval()
    return history


def curriculum_span(fraction: float, epochs: int) -> int:
    """Epochs over which ε anneals: ``⌈fraction · epochs⌉``, at least 2 when there are 2 epochs or more
    (a span of 1 would skip the curriculum, ε at its end value from epoch 0)."""
    span = math.ceil(round(fraction * epochs, 9))  # round: 0.3 · 10 is 3.0000000000000004
    return max(span, 2) if epochs >= 2 else 1


M = TypeVar("M", bound=nn.Module)


def build_and_fit(
    build: Callable[[], M], *, opts: TrainerOptions | None, **fit_kw: Any
) -> tuple[M, list[dict[str, float]]]:
    """Build a model and train it with :func:`fit`, both under a torch RNG forked and seeded by
    ``opts.seed`` (the caller's RNG is untouched; the same seed gives the same initialization and the
    same run). Returns the eval-mode model and the per-epoch history."""
    o = opts or TrainerOptions()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        model = build().to(o.device)
        history = fit(
            model=model,
            device=o.device,
            seed=o.seed,
            on_epoch=o.on_epoch,
            state=o.state,
            checkpoint_every=o.checkpoint_every,
            save_state=o.save_state,
            save_interval_s=o.save_interval_s,
            dtype=o.dtype,
            **fit_kw,
        )
    return model, history


def stream1_batch_loss(cfg: Stream1Config) -> BatchLoss:
    """The OTCA/DAMO objective of :func:`align.losses.stream1_loss` bound to ``cfg``."""

    def batch_loss(model, scale, sat_b, dro_b, sl, dl, epoch):
        out = model.train_forward(sat_b, dro_b)
        span = curriculum_span(cfg.curriculum_fraction, cfg.epochs)
        eps = curriculum_eps(epoch, span, cfg.sinkhorn_eps_start, cfg.sinkhorn_eps_end)
        # Student temperature follows the curriculum (see Stream1Config.student_temp_ratio); the
        # learnable logit scale is for the InfoNCE baselines only.
        scale = torch.tensor(1.0 / (cfg.temp_ratio * eps), device=sat_b.device)
        return stream1_loss(
            out,
            sat_b,
            dro_b,
            scale,
            eps=eps,
            iters=cfg.sinkhorn_iters,
            label_smoothing=cfg.label_smoothing,
            pseudo_thr=cfg.pseudo_thr,
            mutual_match=cfg.mutual_match,
            match_on=cfg.match_on,
            keep_neg=cfg.keep_neg,
            distill_w=cfg.distill_w,
            idt_w=cfg.idt_w,
            lambda_A=cfg.lambda_A,
            lambda_B=cfg.lambda_B,
            feat_w=cfg.feat_w,
            lambda_moe=cfg.lambda_moe,
            sat_labels=sl,
            dro_labels=dl,
        )

    return batch_loss


def train_stream1(
    sat: torch.Tensor,
    dro: torch.Tensor,
    cfg: Stream1Config | None = None,
    *,
    sat_labels: torch.Tensor | None = None,
    dro_labels: torch.Tensor | None = None,
    opts: TrainerOptions | None = None,
) -> tuple[GeoAlignStream1, list[dict[str, float]]]:
    """Train GeoAlign stream 1 (AGRA + OTCA + DAMO) on satellite [Ns, D] and drone [Nd, D] descriptors.

    Unsupervised: labels, when given, are only used to log the pseudo-label accuracy (``pl_acc``,
    ``pl_acc_reliable``). ``opts``: seed, device, dtype, progress and resuming
    (:class:`align.training.TrainerOptions`; a saved state's tensors are copies: ``torch.save`` it and
    load it back with ``weights_only=True``). Returns the eval-mode model and the per-epoch history.
    """
    cfg = cfg or Stream1Config()
    sat, dro, sat_labels, dro_labels = check_inputs(sat, dro, cfg.out_dim, sat_labels, dro_labels)
    return build_and_fit(
        lambda: GeoAlignStream1(cfg),
        method="geoalign_stream1",
        cfg=cfg,
        batch_loss=stream1_batch_loss(cfg),
        draw_drones=uniform_drones(dro.shape[0], cfg.dro_num),
        sat=sat,
        dro=dro,
        sat_labels=sat_labels,
        dro_labels=dro_labels,
        opts=opts,
    )
