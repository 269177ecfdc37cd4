"""CVFT (Shi et al., AAAI'20): cross-view feature transport on cached VGG16 conv5_3 maps.

The head, as in the public TensorFlow code (``script/ot_net.py``), on conv5_3 maps of both views:

1. per view, conv 3×3 stride 2 → 64 channels + ReLU (separate weights; TF ``'SAME'`` padding);
2. the ground map is bilinearly resized to the aerial map's size (8×8 for 256×256 aerial tiles), with
   TF1 ``resize_bilinear``'s legacy sampling (source = destination × in/out, no half-pixel offset);
3. ground branch only — the transport: 1×1 conv → 1 channel + ReLU, flattened to ``n = H·W``;
   fully connected ``n → n²`` (weights truncated N(0, 0.005), bias = identity flattened), reshaped
   to ``[n, n]`` row-major and turned into a transport matrix ``T = sinkhorn(−100 · fc)``, 20
   log-domain iterations (rows then columns, so columns sum to 1 exactly, rows approximately);
   each channel's spatial vector ``f_c ∈ R^n`` becomes ``f_c · T`` (``out[c, o] = Σ_i f[c, i] T[i, o]``);
4. descriptor = flatten in (H, W, C) order, as TF's NHWC reshape does (8·8·64 = 4096), L2-normalized.

What the identity bias implies. The logits are ``−100 · (Wᵀx + I)``, so at initialization the
*diagonal* gets −100 and everything else ≈ 0: Sinkhorn then gives ``T ≈ (J − I)/(n − 1)`` — the
identity assignment is suppressed, not selected (``bias_init="reference"``). Because the gradient of
an entry of a Sinkhorn matrix is proportional to that entry, a diagonal entry at ``e^−100`` never
recovers: the reference transport can move a ground position anywhere *except* onto the same aerial
index. ``bias_init="uniform"`` (zero bias) starts from a near-uniform plan where every position is
reachable; ``logit_scale=+100`` with the reference bias would start (and stay) at the identity.

Baselines from the same file: :class:`VGGConv` (steps 1, 2, 4; no transport) and :class:`VGGGP`
(global max pool of the raw conv5_3 maps, 512-d, no trainable parameters).

Loss: :func:`soft_margin_triplet_loss`, CVFT's weighted soft-margin triplet over all in-batch pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError
from torch import nn

Variant = Literal["cvft", "vgg_conv", "vgg_gp"]
BiasInit = Literal["reference", "uniform"]


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``'SAME'`` padding (before, after) for one axis: output ``ceil(size/stride)``, extra pad after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_output_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Spatial output of a TF ``'SAME'`` conv with ``stride``."""
    return -(-size[0] // stride), -(-size[1] // stride)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's ``'SAME'`` padding (asymmetric when the total is odd) and TF init.

    CVFT initializes weights *and* biases with TF's Xavier-uniform (for a 1-D bias, fan_in = fan_out
    = out_channels, so the bound is sqrt(3 / out_channels)).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, generator: torch.Generator) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        nn.init.xavier_uniform_(self.weight, generator=generator)
        bound = math.sqrt(3.0 / cout)
        nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        return super().forward(F.pad(x, (left, right, top, bottom)))


def tf_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` interpolation weights of TF1 ``resize_bilinear`` (align_corners=False).

    TF1 samples source coordinate ``dst · n_in / n_out`` (no half-pixel centres, unlike
    ``F.interpolate``) and clamps the upper neighbour at the border.
    """
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return torch.from_numpy(m).to(torch.float32)


def resize_bilinear_tf(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` to ``size`` exactly like TF1 ``tf.image.resize_bilinear`` (separable)."""
    ry = tf_bilinear_matrix(x.shape[-2], size[0]).to(x)
    rx = tf_bilinear_matrix(x.shape[-1], size[1]).to(x)
    return torch.einsum("yh,bchw,xw->bcyx", ry, x, rx)


def sinkhorn_log(logits: torch.Tensor, n_iters: int = 20, return_log: bool = False) -> torch.Tensor:
    """Sinkhorn normalization of ``exp(logits)`` in the log domain, batched over leading dimensions.

    Each iteration subtracts the row log-sum-exp, then the column log-sum-exp (CVFT's order), so
    after the last one columns sum to 1 exactly and rows to within the convergence error. Returns the
    near doubly stochastic matrix (or its log with ``return_log``).
    """
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise UserError(f"sinkhorn_log needs square matrices [..., n, n], got {list(logits.shape)}")
    la = logits
    for _ in range(n_iters):
        la = la - la.logsumexp(dim=-1, keepdim=True)
        la = la - la.logsumexp(dim=-2, keepdim=True)
    return la if return_log else la.exp()


def apply_transport(features: torch.Tensor, transport: torch.Tensor) -> torch.Tensor:
    """Move each channel's spatial vector through ``T``: ``out[b, c, o] = Σ_i f[b, c, i] · T[b, i, o]``."""
    b, c, h, w = features.shape
    return torch.bmm(features.reshape(b, c, h * w), transport).reshape(b, c, h, w)


def flatten_hwc(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``[B, C, H, W]`` in TF's NHWC order (channel fastest), as CVFT's descriptors are."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def soft_margin_triplet_loss(
    aerial: torch.Tensor, ground: torch.Tensor, weight: float = 10.0
) -> torch.Tensor:
    """CVFT's weighted soft-margin triplet loss over all in-batch negatives, both directions.

    With L2-normalized descriptors ``a_i`` (aerial) and ``g_j`` (ground), pair ``i`` matching,
    ``d_ij = 2 − 2·a_i·g_j`` and ``B`` the batch size::

        L_g2s = Σ_{i,j} log(1 + exp(w·(d_jj − d_ij))) / (B(B−1))   # ground j vs aerial negatives i
        L_s2g = Σ_{i,j} log(1 + exp(w·(d_ii − d_ij))) / (B(B−1))   # aerial i vs ground negatives j
        L     = (L_g2s + L_s2g) / 2,   w = 10

    As in the reference the sums include ``i = j``; those terms are the constant ``log 2`` (zero
    gradient), adding ``log(2)/(B−1)`` to ``L``.
    """
    if aerial.shape != ground.shape or aerial.ndim != 2:
        raise UserError(
            f"loss needs matching [B, D] descriptors, got {list(aerial.shape)} and {list(ground.shape)}"
        )
    b = aerial.shape[0]
    if b < 2:
        raise UserError("the triplet loss needs a batch of at least 2 pairs; raise batch_size")
    dist = 2.0 - 2.0 * aerial @ ground.T
    pos = dist.diagonal()
    pair_n = b * (b - 1)
    g2s = F.softplus(weight * (pos[None, :] - dist)).sum() / pair_n
    s2g = F.softplus(weight * (pos[:, None] - dist)).sum() / pair_n
    return 0.5 * (g2s + s2g)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def _check_maps(maps: torch.Tensor, channels: int, view: str) -> None:
    if maps.ndim != 4 or maps.shape[1] != channels:
        raise UserError(
            f"{view} maps must be [B, {channels}, H, W] conv5_3 maps, got {list(maps.shape)}; "
            "extract VGG16 conv5_3 maps for this view"
        )


class FeatureTransport(nn.Module):
    """CVFT's transport layer on ``[B, C, H, W]``: predicts ``T [B, n, n]`` from the features, applies it."""

    def __init__(
        self,
        in_channels: int,
        n_positions: int,
        *,
        n_iters: int = 20,
        logit_scale: float = -100.0,
        bias_init: BiasInit = "reference",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.n_positions = n_positions
        self.n_iters = n_iters
        self.logit_scale = logit_scale
        self.conv = SameConv2d(in_channels, 1, kernel=1, stride=1, generator=gen)
        self.fc = nn.Linear(n_positions, n_positions * n_positions)
        # TF's truncated_normal cuts at two standard deviations.
        nn.init.trunc_normal_(self.fc.weight, std=0.005, a=-0.01, b=0.01, generator=gen)
        if bias_init == "reference":
            bias = torch.eye(n_positions).reshape(-1)
        elif bias_init == "uniform":
            bias = torch.zeros(n_positions * n_positions)
        else:
            raise UserError(f"unknown bias_init {bias_init!r}; use 'reference' or 'uniform'")
        with torch.no_grad():
            self.fc.bias.copy_(bias)

    def transport_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """``T [B, n, n]`` (row = ground position i, column = destination o) for features ``x``."""
        b, _, h, w = x.shape
        if h * w != self.n_positions:
            raise UserError(
                f"transport built for {self.n_positions} positions got a {h}×{w} map; "
                "use the aerial map size the model was built with"
            )
        s = F.relu(self.conv(x)).reshape(b, h * w)
        logits = self.fc(s).reshape(b, h * w, h * w) * self.logit_scale
        return sinkhorn_log(logits, self.n_iters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_transport(x, self.transport_matrix(x))


class VGGGP(nn.Module):
    """Baseline ``VGG_gp``: global max pool of each view's conv5_3 map, L2-normalized (no parameters)."""

    variant: Variant = "vgg_gp"

    def __init__(self, in_channels: int = 512) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.dim = in_channels

    def ground(self, maps: torch.Tensor) -> torch.Tensor:
        _check_maps(maps, self.in_channels, "ground")
        return F.normalize(maps.amax(dim=(2, 3)), dim=1)

    def aerial(self, maps: torch.Tensor) -> torch.Tensor:
        _check_maps(maps, self.in_channels, "aerial")
        return F.normalize(maps.amax(dim=(2, 3)), dim=1)

    def forward(
        self, ground_maps: torch.Tensor, aerial_maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ground descriptors, aerial descriptors)``."""
        return self.ground(ground_maps), self.aerial(aerial_maps)


class VGGConv(nn.Module):
    """Baseline ``VGG_conv``: per-view conv 3×3/2 → ``channels`` + ReLU, ground resized, flattened."""

    variant: Variant = "vgg_conv"

    def __init__(
        self,
        in_channels: int = 512,
        channels: int = 64,
        aerial_map_size: tuple[int, int] = (16, 16),
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.aerial_map_size = (int(aerial_map_size[0]), int(aerial_map_size[1]))
        self.out_size = same_output_size(self.aerial_map_size, 2)
        self.dim = self.out_size[0] * self.out_size[1] * channels
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        # Creation order fixes which random numbers each layer gets: ground, aerial, then transport.
        self.grd_conv = SameConv2d(in_channels, channels, kernel=3, stride=2, generator=gen)
        self.sat_conv = SameConv2d(in_channels, channels, kernel=3, stride=2, generator=gen)

    def ground_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """Ground conv features resized to the aerial grid: ``[B, channels, h, w]`` before transport."""
        _check_maps(maps, self.in_channels, "ground")
        return resize_bilinear_tf(F.relu(self.grd_conv(maps)), self.out_size)

    def ground(self, maps: torch.Tensor) -> torch.Tensor:
        """L2-normalized ground descriptors ``[B, dim]`` from conv5_3 maps."""
        return F.normalize(flatten_hwc(self.ground_grid(maps)), dim=1)

    def aerial(self, maps: torch.Tensor) -> torch.Tensor:
        """L2-normalized aerial descriptors ``[B, dim]`` from conv5_3 maps."""
        _check_maps(maps, self.in_channels, "aerial")
        if tuple(maps.shape[-2:]) != self.aerial_map_size:
            raise UserError(
                f"aerial maps are {maps.shape[-2]}×{maps.shape[-1]} but the model was built for "
                f"{self.aerial_map_size[0]}×{self.aerial_map_size[1]}; rebuild it with aerial_map_size"
            )
        return F.normalize(flatten_hwc(F.relu(self.sat_conv(maps))), dim=1)

    def forward(
        self, ground_maps: torch.Tensor, aerial_maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ground descriptors, aerial descriptors)``."""
        return self.ground(ground_maps), self.aerial(aerial_maps)


class CVFT(VGGConv):
    """CVFT: :class:`VGGConv` plus the feature transport on the ground branch."""

    variant: Variant = "cvft"

    def __init__(
        self,
        in_channels: int = 512,
        channels: int = 64,
        aerial_map_size: tuple[int, int] = (16, 16),
        *,
        seed: int = 0,
        sinkhorn_iters: int = 20,
        logit_scale: float = -100.0,
        bias_init: BiasInit = "reference",
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        super().__init__(in_channels, channels, aerial_map_size, generator=gen)
        self.transport = FeatureTransport(
            channels,
            self.out_size[0] * self.out_size[1],
            n_iters=sinkhorn_iters,
            logit_scale=logit_scale,
            bias_init=bias_init,
            generator=gen,
        )

    def transport_matrix(self, ground_maps: torch.Tensor) -> torch.Tensor:
        """The per-image transport ``T [B, n, n]`` for ground conv5_3 maps (for inspection)."""
        return self.transport.transport_matrix(self.ground_grid(ground_maps))

    def ground(self, maps: torch.Tensor) -> torch.Tensor:
        return F.normalize(flatten_hwc(self.transport(self.ground_grid(maps))), dim=1)


MODELS: dict[str, type[nn.Module]] = {"cvft": CVFT, "vgg_conv": VGGConv, "vgg_gp": VGGGP}


def build_model(
    variant: Variant = "cvft",
    *,
    in_channels: int = 512,
    channels: int = 64,
    aerial_map_size: tuple[int, int] = (16, 16),
    seed: int = 0,
    sinkhorn_iters: int = 20,
    logit_scale: float = -100.0,
    bias_init: BiasInit = "reference",
) -> nn.Module:
    """Build one of CVFT's three heads; the init depends only on ``seed``.

    The keyword arguments (without ``seed``) are stored on the model as ``model.config`` (JSON-able):
    ``build_model(**model.config)`` rebuilds the architecture to load a saved state dict into.
    """
    config: dict[str, Any] = {
        "variant": variant,
        "in_channels": int(in_channels),
        "channels": int(channels),
        "aerial_map_size": [int(aerial_map_size[0]), int(aerial_map_size[1])],
        "sinkhorn_iters": int(sinkhorn_iters),
        "logit_scale": float(logit_scale),
        "bias_init": bias_init,
    }
    model: nn.Module
    if variant == "cvft":
        model = CVFT(
            in_channels,
            channels,
            aerial_map_size,
            seed=seed,
            sinkhorn_iters=sinkhorn_iters,
            logit_scale=logit_scale,
            bias_init=bias_init,
        )
    elif variant == "vgg_conv":
        model = VGGConv(in_channels, channels, aerial_map_size, seed=seed)
    elif variant == "vgg_gp":
        model = VGGGP(in_channels)
    else:
        raise UserError(f"unknown CVFT variant {variant!r}; use one of {', '.join(MODELS)}")
    model.config = config
    return model


def encode_blocks(
    encode: Callable[[torch.Tensor], torch.Tensor],
    maps: torch.Tensor | np.ndarray | Iterable[torch.Tensor | np.ndarray],
    batch_size: int,
    device: torch.device | str,
) -> torch.Tensor:
    """Run ``encode`` over ``maps`` (one array or an iterable of blocks) in batches; float32 CPU result."""
    blocks = [maps] if isinstance(maps, (torch.Tensor, np.ndarray)) else maps
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for block in blocks:
            block_t = torch.as_tensor(block)
            for start in range(0, block_t.shape[0], batch_size):
                x = block_t[start : start + batch_size].to(device=device, dtype=torch.float32)
                out.append(encode(x).float().cpu())
    if not out:
        raise UserError("no maps to encode: the input is empty; check the cache entry")
    return torch.cat(out)
