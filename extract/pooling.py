"""Global descriptors from a block's tokens, vectorized over the batch.

``gem`` is GeoAlign's recipe (``JZLhope/GeoAlign``: ``extractor.py`` + ``aggregator.py``), with the
token facet at its default settings:

1. keep the patch tokens only: ``get_intermediate_layers`` drops CLS and the 4 registers;
2. L2-normalize every spatial location over the channels;
3. GeM: ``clamp(min=eps) ** p``, mean over locations, ``** (1/p)`` (p = 3, eps = 1e-6);
4. L2-normalize the descriptor.

GeoAlign runs its ``Avg`` and ``Max`` aggregators through the same per-location normalization
(step 2) before pooling, so ``avg`` and ``max`` here do too by default (``local_norm=True``);
``local_norm=False`` pools the raw tokens. ``cls`` is the CLS token, L2-normalized.

:func:`pool_maps` pools VGG16's conv maps ``[B, C, H, W]`` the same way (each spatial location is a
token; there is no CLS). :func:`gem` is the one GeM formula both use.
"""

from __future__ import annotations

import torch.nn.functional as F
from cvgl.core.errors import UserError
from torch import Tensor

POOLINGS: tuple[str, ...] = ("gem", "avg", "max", "cls")
"""Pooling methods by name."""


def pool(
    tokens: Tensor,
    num_prefix_tokens: int,
    method: str,
    *,
    p: float = 3.0,
    eps: float = 1e-6,
    local_norm: bool = True,
) -> Tensor:
    """One L2-normalized descriptor per image.

    Args:
        tokens: ``[B, N, C]`` block output, tokens ordered CLS, registers, patches (as
            ``DINOv3Backbone.forward_layers`` returns them). Any float dtype; pooled in float32.
        num_prefix_tokens: tokens before the patches (1 CLS + registers; 5 for DINOv3).
        method: one of :data:`POOLINGS`.
        p: GeM exponent (``gem`` only).
        eps: GeM clamp floor (``gem`` only).
        local_norm: L2-normalize each patch token over channels before ``gem``/``avg``/``max``
            (GeoAlign's extractor always does).

    Returns:
        ``[B, C]`` float32, unit L2 norm per row.
    """
    if method not in POOLINGS:
        raise UserError(f"unknown pooling {method!r}; use one of {', '.join(POOLINGS)}")
    if not isinstance(tokens, Tensor) or tokens.ndim != 3 or not tokens.is_floating_point():
        shape = list(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise UserError(f"pooling expects float tokens shaped [batch, tokens, channels], got {shape}")
    n_tokens = tokens.shape[1]
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise UserError(f"num_prefix_tokens must be an integer >= 0, got {num_prefix_tokens!r}")
    if method == "cls":
        if num_prefix_tokens < 1:
            raise UserError("pooling 'cls' needs a CLS token (num_prefix_tokens >= 1); pick gem, avg or max")
        return F.normalize(tokens[:, 0].float(), dim=-1)
    if num_prefix_tokens >= n_tokens:
        raise UserError(
            f"no patch tokens to pool: {n_tokens} tokens with {num_prefix_tokens} prefix tokens; "
            "check num_prefix_tokens and the image size"
        )
    patches = tokens[:, num_prefix_tokens:].float()  # [B, HW, C]
    if local_norm:
        patches = F.normalize(patches, dim=-1)
    return F.normalize(_reduce(patches, 1, method, p, eps), dim=-1)


def gem(x: Tensor, dim: int | tuple[int, ...], p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalized mean over ``dim``: ``mean(clamp(x, min=eps) ** p) ** (1/p)``.

    Raises:
        UserError: ``p`` or ``eps`` not positive.
    """
    if not p > 0:
        raise UserError(f"GeM exponent p must be > 0, got {p!r}")
    if not eps > 0:
        raise UserError(f"GeM eps must be > 0, got {eps!r}")
    return x.clamp(min=eps).pow(p).mean(dim=dim).pow(1.0 / p)


def _reduce(x: Tensor, dim: int | tuple[int, ...], method: str, p: float, eps: float) -> Tensor:
    """``gem``, ``avg`` or ``max`` over ``dim`` (no normalization)."""
    if method == "gem":
        return gem(x, dim, p, eps)
    if method == "avg":
        return x.mean(dim=dim)
    return x.amax(dim=dim)


def pool_maps(
    maps: Tensor,
    method: str,
    *,
    p: float = 3.0,
    eps: float = 1e-6,
    local_norm: bool = True,
) -> Tensor:
    """One L2-normalized descriptor per conv map: ``[B, C, H, W]`` → ``[B, C]`` float32.

    ``method`` is ``gem``, ``avg`` or ``max``; ``local_norm`` L2-normalizes each location over the
    channels first, as :func:`pool` does for tokens. The reduction runs over the contiguous spatial
    axes, which fixes its floating-point summation order (and so the stored values).
    """
    if method not in ("gem", "avg", "max"):
        raise UserError(f"unknown pooling {method!r} for conv maps; use gem, avg or max")
    if not isinstance(maps, Tensor) or maps.ndim != 4 or not maps.is_floating_point():
        shape = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise UserError(
            f"map pooling expects float maps shaped [batch, channels, height, width], got {shape}"
        )
    maps = maps.float()
    if local_norm:
        maps = F.normalize(maps, dim=1)
    return F.normalize(_reduce(maps, (2, 3), method, p, eps), dim=1)


__all__ = ["POOLINGS", "gem", "pool", "pool_maps"]
