"""The backbones behind one call (images → ``{layer: rows}``) and the batch size they run at.

:class:`DinoModel` pools DINOv3 tokens (or attention facets) of several blocks from one forward pass;
:class:`VGGModel` runs VGG16's conv stack (:meth:`extract.vgg16.VGG16Backbone.forward_layers`) once
for several layers and pools the maps, or keeps them. Both pool with :mod:`extract.pooling`.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.extract.keys import Layer, check_layers, is_vgg, vgg_arch

if TYPE_CHECKING:
    from cvgl.extract.ranks import Ranks

#: ``extract.batch_size=auto`` on a CPU: no device memory to fill, so the default batch.
AUTO_BATCH_CPU = 16


def compute_dtype(cfg: Config, device: torch.device) -> str:
    """``backbone.dtype``, or for ``auto`` bf16 on a GPU and fp32 on a CPU (it is part of the key)."""
    if cfg.backbone.dtype != "auto":
        return cfg.backbone.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


class ExtractModel:
    """A loaded backbone: ``model(x)`` gives ``{layer: Tensor[B, *row_shape]}`` (float32, on the device)."""

    layers: list[Layer]
    device: torch.device
    dtype: str

    def __call__(self, x: torch.Tensor) -> dict[Layer, torch.Tensor]:
        """Rows of every layer for a batch of normalized images ``[B, 3, H, W]``."""
        raise NotImplementedError

    def row_shape(self, layer: Layer, image_size: tuple[int, int] | None) -> tuple[int, ...]:
        """The shape of one row of ``layer`` for inputs of ``image_size`` (``(h, w)``; None = unknown)."""
        raise NotImplementedError

    compiled: bool = False

    def _no_grad(self) -> contextlib.AbstractContextManager:
        """inference_mode, or no_grad for a torch.compile'd network: inductor cannot run graphs whose
        tensors come from inference mode ("Cannot set version_counter for inference tensor")."""
        return torch.no_grad() if self.compiled else torch.inference_mode()

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the compute device when the compute dtype asks for it."""
        if self.dtype != "bfloat16":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


class DinoModel(ExtractModel):
    """DINOv3: tokens (or attention facets) of several blocks in one pass, pooled per image."""

    def __init__(self, cfg: Config, device: torch.device, dtype: str, net: Any = None) -> None:
        """``net``: an already built DINOv3Backbone to use instead of loading ``backbone.weights``
        (the GPU benchmark builds a random ViT-H+ directly on the device)."""
        from cvgl.extract.dinov3 import load_dinov3
        from cvgl.extract.pooling import pool

        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self._pool = pool
        bad = [L for L in cfg.backbone.layers if not isinstance(L, int)]
        if bad:
            raise UserError(
                f"backbone.layers {bad} are not block indices; {cfg.backbone.name} takes integers, "
                "e.g. backbone.layers=[26,28]"
            )
        if cfg.pooling.name == "none":
            raise UserError(
                "pooling.name=none (spatial maps) is for backbone.name=vgg16; pick gem, avg, max or cls for DINOv3"
            )
        from cvgl.extract.hub import resolve_weights

        self.net = net or load_dinov3(
            cfg.backbone.name,
            resolve_weights(cfg.backbone.weights),
            seed=cfg.backbone.seed,
            arch_overrides=cfg.backbone.arch or None,
        )
        bad = [L for L in cfg.backbone.layers if not 0 <= int(L) < self.net.depth]
        if bad:
            raise UserError(
                f"backbone.layers {bad} out of range for {cfg.backbone.name} (blocks 0..{self.net.depth - 1})"
            )
        self.layers = list(dict.fromkeys(int(L) for L in cfg.backbone.layers))
        # The compute dtype is part of the cache key, so the network must run exactly in it. CUDA
        # autocast lives inside the backbone (it also covers facets); CPU bf16 is wrapped here.
        self.net.cuda_autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
        self.net.eval().to(device)
        self.num_prefix_tokens = self.net.num_prefix_tokens
        self.hidden_size = self.net.hidden_size
        self.compiled = bool(cfg.backbone.compile)
        if self.compiled:
            # forward_layers carries its own inference_mode decorator; compile the method beneath it.
            raw = type(self.net).forward_layers.__wrapped__
            self._forward = torch.compile(functools.partial(raw, self.net))
        else:
            self._forward = self.net

    def _pool_tokens(self, t: torch.Tensor) -> torch.Tensor:
        p = self.cfg.pooling
        prefix = self.num_prefix_tokens
        if p.use_cls and p.name != "cls":
            # CLS joins the patches as one more location; registers never do (Meta's
            # get_intermediate_layers drops them, and GeoAlign's facet path has no room for them).
            t = torch.cat([t[:, :1], t[:, prefix:]], dim=1)
            prefix = 0
        return self._pool(t, prefix, p.name, p=p.p, eps=p.eps, local_norm=p.local_norm).float()

    def __call__(self, x: torch.Tensor) -> dict[Layer, torch.Tensor]:
        with self._no_grad():
            x = x.to(self.device, non_blocking=True)
            cpu_bf16 = self.device.type == "cpu" and self.dtype == "bfloat16"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
                tokens = self._forward(x, self.layers, facet=self.cfg.backbone.facet)
            return {L: self._pool_tokens(t) for L, t in tokens.items()}

    def row_shape(self, layer: Layer, image_size: tuple[int, int] | None) -> tuple[int, ...]:
        return (int(self.hidden_size),)


class VGGModel(ExtractModel):
    """VGG16's conv stack: several layers in one pass; pooled descriptors or the spatial maps."""

    def __init__(self, cfg: Config, device: torch.device, dtype: str) -> None:
        from cvgl.extract.hub import resolve_weights
        from cvgl.extract.vgg16 import load_vgg16

        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.layers = [str(L) for L in check_layers(cfg)]
        self.ceil = vgg_arch(cfg)["pool"] == "ceil"
        self.net = load_vgg16(resolve_weights(cfg.backbone.weights), seed=cfg.backbone.seed).to(device)
        if device.type == "cuda" and dtype == "float32":
            # float32 is in the key: keep cuDNN from running the convolutions in TF32.
            torch.backends.cudnn.allow_tf32 = False
        self.compiled = bool(cfg.backbone.compile)
        stack = functools.partial(self.net.forward_layers, layers=self.layers, cvft=self.ceil)
        self._features = torch.compile(stack) if self.compiled else stack

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        from cvgl.extract.pooling import pool_maps

        p = self.cfg.pooling
        if p.name == "none":
            return maps.float()
        return pool_maps(maps, p.name, p=p.p, eps=p.eps, local_norm=p.local_norm)

    def __call__(self, x: torch.Tensor) -> dict[Layer, torch.Tensor]:
        with self._no_grad():
            x = x.to(self.device, non_blocking=True)
            with self._autocast():
                maps = self._features(x)
            return {L: self._pool(maps[L]) for L in self.layers}

    def row_shape(self, layer: Layer, image_size: tuple[int, int] | None) -> tuple[int, ...]:
        from cvgl.extract.vgg16 import CONV_SHAPES, LAYER_END

        end = LAYER_END[str(layer)]
        channels = CONV_SHAPES[max(i for i in CONV_SHAPES if i <= end)][1]
        if self.cfg.pooling.name != "none":
            return (channels,)
        if image_size is None:
            raise UserError(
                "conv maps need a fixed input size; set preprocess.resize or preprocess.recipe=cvft"
            )
        h, w = image_size
        for k in range(1, 6):
            if LAYER_END[f"pool{k}"] <= end:
                h, w = ((h + 1) // 2, (w + 1) // 2) if self.ceil else (h // 2, w // 2)
        return (channels, h, w)


def build_model(cfg: Config, device: torch.device, dtype: str) -> ExtractModel:
    """The backbone ``backbone.name`` names, ready on ``device``."""
    return VGGModel(cfg, device, dtype) if is_vgg(cfg) else DinoModel(cfg, device, dtype)


def probe_batch_size(
    run: Callable[[int], float],
    cap: int,
    *,
    is_oom: Callable[[BaseException], bool],
    min_gain: float = 1.03,
) -> int:
    """Doubling search for the batch size that fills the device.

    ``run(b)`` processes one batch of ``b`` images and returns the seconds it took. Sizes 1, 2, 4, …
    up to ``cap`` are tried while they fit in memory and each doubling still raises images/s by
    ``min_gain``; the largest such size is returned (at least 1).
    """
    best, best_rate, b = 1, 0.0, 1
    while b <= cap:
        try:
            seconds = run(b)
        except BaseException as exc:  # noqa: BLE001 - only out-of-memory ends the search quietly
            if not is_oom(exc):
                raise
            break
        rate = b / max(seconds, 1e-9)
        if best_rate and rate < best_rate * min_gain:
            break
        best, best_rate = b, rate
        b *= 2
    return best


def choose_batch_size(
    cfg: Config, model: ExtractModel, image_size: tuple[int, int] | None, ranks: Ranks
) -> int:
    """``extract.batch_size``, or for ``auto`` the probe's answer (the same on every rank: the smallest)."""
    bs = cfg.extract.batch_size
    if bs != "auto":
        return int(bs)
    if model.device.type != "cuda" or image_size is None:
        chosen = AUTO_BATCH_CPU
    else:
        h, w = image_size

        def run(b: int) -> float:
            x = torch.randn(b, 3, h, w, device=model.device)
            model(x)  # warm-up: kernels, autotuning, allocator
            torch.cuda.synchronize(model.device)
            t0 = time.perf_counter()
            model(x)
            torch.cuda.synchronize(model.device)
            return time.perf_counter() - t0

        cap = max(1, min(cfg.extract.max_batch_size, cfg.extract.shard_rows))
        chosen = probe_batch_size(run, cap, is_oom=lambda e: isinstance(e, torch.cuda.OutOfMemoryError))
        torch.cuda.empty_cache()
    return int(min(ranks.gather(chosen)))


__all__ = [
    "AUTO_BATCH_CPU",
    "DinoModel",
    "ExtractModel",
    "VGGModel",
    "build_model",
    "choose_batch_size",
    "compute_dtype",
    "probe_batch_size",
]
