"""ISMS: linear whitening of concatenated, L2-normalized backbone layers (GeoAlign's stream 2).

The model is ``encoder`` (Linear, no bias, orthogonal init) → ``bn_whiten`` (BatchNorm1d) →
``decoder`` (Linear). The descriptor is ``normalize(bn_whiten(encoder(x)))``; the decoder exists only
for training. State-dict keys match GeoAlign's released ``isms_model_26_28.pth``, so that file loads
directly.

Training objective (unsupervised, both views pooled together), per batch of inputs ``x``:

    L = ‖decoder(z) − x‖² / n                       (reconstruction: keep the information)
      + w_decor · ‖offdiag(C)‖²_F / d               (decorrelation: whiten, not only standardize)

where ``z = bn_whiten(encoder(x))`` and ``C = zᵀz / n`` is the batch correlation of the whitened
codes. BatchNorm alone equalizes per-dimension variance; the off-diagonal term removes the
correlations that dominate raw ViT descriptors (a few directions carry most of the energy), which is
what makes plain inner products discriminative again. The paper leaves the exact decorrelation
penalty open; this squared off-diagonal Frobenius norm is our choice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from cvgl.align.training import TrainerOptions
from torch import nn


@dataclass
class ISMSConfig:
    """ISMS's hyperparameters, ``align.params.isms`` wherever ISMS is trained (``isms``, ``fusion``):
    GeoAlign's stream-2 width and the trainer's settings."""

    out_dim: int = 1280
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    w_decor: float = 1.0


class ISMS(nn.Module):
    """Encoder → BatchNorm whitening → decoder."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(in_dim, out_dim, bias=False)
        self.bn_whiten = nn.BatchNorm1d(out_dim)
        self.decoder = nn.Linear(out_dim, in_dim)
        nn.init.orthogonal_(self.encoder.weight)

    @property
    def in_dim(self) -> int:
        return self.encoder.in_features

    @property
    def out_dim(self) -> int:
        return self.encoder.out_features

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn_whiten(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The ISMS descriptor: normalize(bn_whiten(encoder(x)))."""
        return F.normalize(self.codes(x), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.codes(x)
        return z, self.decoder(z)


def isms_input(layers: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-layer descriptors, each L2-normalized first (GeoAlign's stream-2 input)."""
    return torch.cat([F.normalize(t.float(), dim=-1) for t in layers], dim=-1)


def isms_loss(model: ISMS, x: torch.Tensor, w_decor: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction + off-diagonal decorrelation of the whitened codes (see module docstring)."""
    z, recon = model(x)
    # Under bf16 autocast the model's matmuls run in bf16; the loss terms are summed in float32.
    z, recon = z.float(), recon.float()
    rec = (recon - x).pow(2).sum(dim=1).mean()
    n, d = z.shape
    corr = (z.T @ z) / n
    off = corr - torch.diag_embed(torch.diagonal(corr))
    decor = off.pow(2).sum() / d
    loss = rec + w_decor * decor
    return loss, {"loss": loss.item(), "rec": rec.item(), "decor": decor.item()}


def train_isms(
    x: torch.Tensor,
    cfg: ISMSConfig,
    *,
    opts: TrainerOptions | None = None,
) -> ISMS:
    """Train ISMS on ``x`` [n, in_dim] (both views stacked); deterministic for a given seed on CPU.

    ``opts`` (:class:`align.training.TrainerOptions`): seed, device, dtype (``bfloat16``: bf16
    autocast), progress and resuming; a saved state holds plain tensors (it loads with
    ``weights_only=True``) and is saved after every epoch, a state of 32 MB or more at most every
    ``save_interval_s`` (:class:`align.train_stream1.SaveSchedule`).
    """
    from cvgl.align.train_stream1 import SaveSchedule, autocast

    o = opts or TrainerOptions()
    seed, device, on_epoch, state, save_state = o.seed, o.device, o.on_epoch, o.state, o.save_state
    save_interval_s, dtype = o.save_interval_s, o.dtype

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ISMS(x.shape[1], cfg.out_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        start = int(state["epoch"])
    n = x.shape[0]
    # BatchNorm needs at least two rows per batch; a last batch of one would be dropped.
    bs = max(2, min(cfg.batch_size, n))
    x = x.to(device)
    state_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    schedule = SaveSchedule(state_bytes, 1, save_interval_s, cfg.epochs)
    for epoch in range(start, cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen).to(device)
        totals: dict[str, float] = {}
        steps = 0
        for begin in range(0, n, bs):
            idx = perm[begin : begin + bs]
            if idx.numel() < 2:
                continue
            with autocast(device, dtype):
                loss, parts = isms_loss(model, x[idx], cfg.w_decor)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
        if on_epoch is not None:
            on_epoch(epoch, {k: v / max(steps, 1) for k, v in totals.items()})
        if save_state is not None and schedule.due(epoch + 1):
            save_state(
                epoch + 1,
                {
                    "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "generator": gen.get_state(),
                    "epoch": epoch + 1,
                },
            )
            schedule.saved()
    model.eval()
    return model


def isms_config_dict(model: ISMS, cfg: ISMSConfig) -> dict:
    """JSON-able description saved next to the safetensors weights."""
    return {"method": "isms", "in_dim": model.in_dim, "out_dim": model.out_dim, "train": asdict(cfg)}
