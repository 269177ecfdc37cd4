"""Baselines for GeoAlign's ablations, trained by the same loop as stream 1 (:func:`align.train_stream1.fit`).

* :func:`train_emcvgl`: EM-CVGL (Li et al., TGRS'24), GeoAlign's predecessor. One autoencoder shared
  by both views (``enc = Linear + BatchNorm``, ``dec = Linear + BatchNorm``), hard mutual
  nearest-neighbour pseudo-labels on the cosine similarity, symmetric InfoNCE, L1 reconstruction.
  Defaults from EM-CVGL's ``base_autoen_lr00001_randomD_share_recon_ssl_701.yml``.
* :func:`train_supervised`: the stream-1 adapter with GeoAlign's full objective, but the transport
  pseudo-labels replaced by the true pairs (each satellite with drones of its own building): the
  upper bound an unsupervised label generator can reach with this adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from cvgl.align.geoalign import INITS, GeoAlignStream1, Stream1Config, init_autoencoder
from cvgl.align.losses import (
    hard_pseudo_label_infonce,
    l1_unit,
    label_match_targets,
    pseudo_label_accuracy,
    stream1_loss,
)
from cvgl.align.train_stream1 import DrawDrones, build_and_fit, check_inputs, uniform_drones
from cvgl.align.training import TrainerOptions
from cvgl.core.errors import UserError
from torch import nn


@dataclass
class EMCVGLConfig:
    """EM-CVGL hyperparameters (its released config; ``out_dim`` is the input descriptor width)."""

    out_dim: int = 1280
    vec_dim: int = 2048
    epochs: int = 200
    batch_size: int = 701
    dro_num: int = 1
    lr: float = 2e-4
    weight_decay: float = 1e-2  # torch.optim.AdamW's default, which EM-CVGL keeps
    warm_epochs: float = 1.0
    scheduler: str = "cosine"
    optim: str = "AdamW"
    clip_grad: float = 100.0
    label_smoothing: float = 0.1
    pseudo_thr: float = 0.1
    mutual_match: bool = True
    keep_neg: bool = True
    idt_w: float = 1.0
    temperature_init: float = 14.28
    # Same initialization choice as stream 1 (Stream1Config.init), so that the comparison isolates
    # the pseudo-label method: "isometric" (ours, default) or "default" (PyTorch's, EM-CVGL's code).
    init: str = "isometric"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise UserError(f"EM-CVGL init {self.init!r} is unknown; use one of {', '.join(INITS)}")
        if (
            self.out_dim <= 0
            or self.vec_dim <= 0
            or self.epochs < 1
            or self.batch_size < 2
            or self.dro_num < 1
        ):
            raise UserError(
                "EM-CVGL needs positive out_dim/vec_dim, epochs >= 1, batch_size >= 2, dro_num >= 1; fix the config"
            )
        if self.optim not in ("AdamW", "CAdamW") or self.scheduler not in ("cosine", "constant"):
            raise UserError(
                f"EM-CVGL optim {self.optim!r}/scheduler {self.scheduler!r} unknown; use AdamW|CAdamW and cosine|constant"
            )


class EMCVGLAdapter(nn.Module):
    """EM-CVGL's shared autoencoder (``AutoEnc2_share``): ``enc1 = enc2``, ``dec1 = dec2``.

    Descriptor (both views): ``normalize(enc(x))``.
    """

    def __init__(self, cfg: EMCVGLConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc1 = nn.Sequential(nn.Linear(cfg.out_dim, cfg.vec_dim), nn.BatchNorm1d(cfg.vec_dim))
        self.dec1 = nn.Sequential(nn.Linear(cfg.vec_dim, cfg.out_dim), nn.BatchNorm1d(cfg.out_dim))
        self.enc2 = self.enc1
        self.dec2 = self.dec1
        init_autoencoder(self.enc1[0], self.dec1[0], cfg.init)

    def forward(self, x: torch.Tensor, view: str = "sat") -> torch.Tensor:
        return F.normalize(self.enc1(x), dim=-1)

    @torch.no_grad()
    def describe(self, x: torch.Tensor, view: str = "sat", batch_size: int = 4096) -> torch.Tensor:
        """Eval-mode descriptors (the view does not matter: the encoder is shared)."""
        if x.ndim != 2 or x.shape[1] != self.cfg.out_dim:
            raise UserError(
                f"EM-CVGL input has shape {tuple(x.shape)}, expected [N, {self.cfg.out_dim}]; use the layer it was trained on"
            )
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            return torch.cat(
                [
                    self(x[i : i + batch_size].to(dev, torch.float32)).cpu()
                    for i in range(0, x.shape[0], batch_size)
                ]
            )
        finally:
            self.train(was)


def _emcvgl_batch_loss(cfg: EMCVGLConfig):
    """``L = InfoNCE(hard mutual pseudo-labels) + idt_w·(|n(dec(enc(A))) − n(A)|₁ + |n(dec(enc(B))) − n(B)|₁)``."""

    def batch_loss(model, scale, sat_b, dro_b, sl, dl, epoch):
        enc_a = model.enc1(sat_b)
        enc_b = model.enc2(dro_b)
        # Under bf16 autocast only the adapter runs in bf16; similarities and losses stay float32.
        # (The order of the calls is kept: it fixes autograd's accumulation order, so float32 runs
        # give the same bytes as before autocast existed.)
        with torch.autocast(sat_b.device.type, enabled=False):
            sim = F.normalize(enc_a.float(), dim=-1) @ F.normalize(enc_b.float(), dim=-1).T
            l_pseudo, matches = hard_pseudo_label_infonce(
                sim,
                scale,
                pseudo_thr=cfg.pseudo_thr,
                mutual_match=cfg.mutual_match,
                keep_neg=cfg.keep_neg,
                label_smoothing=cfg.label_smoothing,
            )
        rec_a, rec_b = model.dec1(enc_a), model.dec2(enc_b)
        with torch.autocast(sat_b.device.type, enabled=False):
            l_rec = l1_unit(rec_a.float(), sat_b) + l1_unit(rec_b.float(), dro_b)
            loss = l_pseudo + cfg.idt_w * l_rec
        stats = {
            "loss": loss.item(),
            "pseudo": l_pseudo.item(),
            "rec": l_rec.item(),
            "reliable_dro": matches.dro_keep.float().mean().item(),
            "scale": float(scale.detach()),
        }
        stats.update(pseudo_label_accuracy(matches, sl, dl))
        return loss, stats

    return batch_loss


def train_emcvgl(
    sat: torch.Tensor,
    dro: torch.Tensor,
    cfg: EMCVGLConfig | None = None,
    *,
    sat_labels: torch.Tensor | None = None,
    dro_labels: torch.Tensor | None = None,
    opts: TrainerOptions | None = None,
) -> tuple[EMCVGLAdapter, list[dict[str, float]]]:
    """Train the EM-CVGL baseline (unsupervised; labels only for the logged pseudo-label accuracy)."""
    cfg = cfg or EMCVGLConfig(
        out_dim=int(sat.shape[1]) if isinstance(sat, torch.Tensor) and sat.ndim == 2 else 1280
    )
    sat, dro, sat_labels, dro_labels = check_inputs(sat, dro, cfg.out_dim, sat_labels, dro_labels)
    return build_and_fit(
        lambda: EMCVGLAdapter(cfg),
        method="emcvgl",
        cfg=cfg,
        batch_loss=_emcvgl_batch_loss(cfg),
        draw_drones=uniform_drones(dro.shape[0], cfg.dro_num),
        sat=sat,
        dro=dro,
        sat_labels=sat_labels,
        dro_labels=dro_labels,
        opts=opts,
    )


def paired_drones(sat_labels: torch.Tensor, dro_labels: torch.Tensor, per_sat: int) -> DrawDrones:
    """Supervised draw: for every satellite of the batch, ``per_sat`` random drones of its label.

    Vectorized: drones sorted by label, each satellite's label located by binary search, a uniform
    offset inside its group. Satellites whose label has no drone are dropped from the batch.
    """
    order = torch.argsort(dro_labels, stable=True)
    uniq, counts = torch.unique_consecutive(dro_labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts

    def draw(sat_idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lab = sat_labels[sat_idx]
        pos = torch.searchsorted(uniq, lab).clamp(max=len(uniq) - 1)
        keep = uniq[pos] == lab
        pos = pos[keep].repeat_interleave(per_sat)
        offset = (torch.rand(pos.numel(), generator=gen) * counts[pos]).long().clamp(max=counts[pos] - 1)
        return order[starts[pos] + offset], keep

    return draw


def train_supervised(
    sat: torch.Tensor,
    dro: torch.Tensor,
    cfg: Stream1Config | None = None,
    *,
    sat_labels: torch.Tensor,
    dro_labels: torch.Tensor,
    opts: TrainerOptions | None = None,
) -> tuple[GeoAlignStream1, list[dict[str, float]]]:
    """Supervised bound: the stream-1 adapter and objective with true-pair targets.

    Each step pairs every satellite with ``dro_num`` drones of its building; the distillation targets
    are the label-match matrix (``M_ij = [y_i = y_j]`` row-normalized, label-smoothed) instead of the
    Sinkhorn plan, every row is used (no reliability filtering); reconstruction, cycle and balance
    terms are unchanged.
    """
    cfg = cfg or Stream1Config()
    sat, dro, sat_labels, dro_labels = check_inputs(
        sat, dro, cfg.out_dim, sat_labels, dro_labels, need_labels=True
    )
    assert sat_labels is not None and dro_labels is not None
    if not torch.isin(sat_labels, dro_labels).any():
        raise UserError(
            "no satellite label occurs among the drone labels; pass the building ids of both views"
        )

    def batch_loss(model, scale, sat_b, dro_b, sl, dl, epoch):
        out = model.train_forward(sat_b, dro_b)
        return stream1_loss(
            out,
            sat_b,
            dro_b,
            scale,
            eps=cfg.sinkhorn_eps_end,
            iters=cfg.sinkhorn_iters,
            label_smoothing=cfg.label_smoothing,
            pseudo_thr=cfg.pseudo_thr,
            mutual_match=False,
            keep_neg=True,
            distill_w=cfg.distill_w,
            idt_w=cfg.idt_w,
            lambda_A=cfg.lambda_A,
            lambda_B=cfg.lambda_B,
            feat_w=cfg.feat_w,
            lambda_moe=cfg.lambda_moe,
            sat_labels=sl,
            dro_labels=dl,
            targets=label_match_targets(sl, dl),
        )

    return build_and_fit(
        lambda: GeoAlignStream1(cfg),
        method="geoalign_stream1_supervised",
        cfg=cfg,
        batch_loss=batch_loss,
        draw_drones=paired_drones(sat_labels, dro_labels, cfg.dro_num),
        sat=sat,
        dro=dro,
        sat_labels=sat_labels,
        dro_labels=dro_labels,
        opts=opts,
    )

