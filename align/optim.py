"""Optimizer and learning-rate schedule of GeoAlign stream 1: cautious AdamW and warm-up + cosine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer


class CAdamW(Optimizer):
    """Cautious AdamW (Liang et al. 2024, "Cautious Optimizers"), as GeoAlign trains stream 1.

    Plain AdamW (decoupled weight decay, PyTorch's bias-correction and ε placement)::

        θ ← θ (1 − η λ)
        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
        u = m / (√v / √(1 − β₂ᵗ) + ε)

    then the cautious mask drops the coordinates whose update direction disagrees with the current
    gradient and rescales the rest so the mean step size is kept::

        φ = [u ⊙ g > 0] / max(mean([u ⊙ g > 0]), 1e-3)
        θ ← θ − η / (1 − β₁ᵗ) · u ⊙ φ

    When every sign agrees, φ ≡ 1 and this is exactly ``torch.optim.AdamW`` (the tests check it).
    GeoAlign's own copy puts ε outside the bias correction (``√v + ε`` with the correction folded
    into the step); the two differ only in the effective ε, and we keep PyTorch's convention so the
    AdamW equivalence is exact. The mask mean is per parameter tensor, as in the reference code.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or weight_decay < 0:
            raise ValueError(
                f"invalid CAdamW hyperparameters lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    # A tensor step counter keeps the state dict loadable with weights_only=True.
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bc1 = 1 - beta1**t
                bc2 = 1 - beta2**t
                # The same arithmetic as the formula above, but in place on two scratch tensors: at
                # release size (33.6M parameters) every fresh temporary is a 100 MB allocation, and
                # the step is bound by memory traffic, not arithmetic.
                u = v.sqrt().div_(math.sqrt(bc2)).add_(eps)
                torch.div(m, u, out=u)
                mask = torch.mul(u, g).gt_(0)
                mask.div_(mask.mean().clamp_(min=1e-3))
                p.add_(u.mul_(mask), alpha=-lr / bc1)
        return loss


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """LR multiplier at optimizer step ``step`` (0-based), as transformers' schedules with warm-up.

    ``step / warmup`` during warm-up (so the very first step runs at lr 0, exactly as GeoAlign's
    ``get_cosine_schedule_with_warmup`` does), then ``½(1 + cos(π · (step − warmup)/(total − warmup)))``
    for ``kind="cosine"`` or 1 for ``kind="constant"``.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class WarmupCosine:
    """Per-step LR schedule; ``state_dict`` is plain numbers so checkpoints load with weights_only."""

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int, total_steps: int, kind: str = "cosine"
    ) -> None:
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        f = warmup_cosine_factor(self.step_count, self.warmup_steps, self.total_steps, self.kind)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "base_lrs": list(self.base_lrs),
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "kind": self.kind,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = int(state["total_steps"])
        self.kind = str(state["kind"])
        self._apply()


def build_optimizer(name: str, params: Iterable[torch.Tensor], lr: float, weight_decay: float) -> Optimizer:
    """``"CAdamW"`` or ``"AdamW"`` by name (no ``eval``)."""
    if name == "CAdamW":
        return CAdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "AdamW":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")
