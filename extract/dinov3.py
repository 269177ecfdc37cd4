"""DINOv3 ViT backbones on top of transformers' ``DINOv3ViTModel``, loading local weights only.

The seven ViT variants Meta released are described in :data:`VARIANTS` so that a model built here has
exactly the architecture of Meta's hub model of the same name (``dinov3/hub/backbones.py``).
:func:`load_dinov3` fills it from

* a Hugging Face folder (``config.json`` + ``model.safetensors`` or a sharded index),
* Meta's original ``.pth`` state dict (keys renamed, ``qkv`` split, masked key bias dropped),
* nothing: a random model, deterministic by ``seed`` (the demo uses this with
  ``arch_overrides={"depth": 4}`` for a tiny model; its descriptors carry no meaning).

The checkpoint layout is recognised from its keys, not its file name, so a ``.safetensors`` file with
Meta's names or a ``.pth`` with Hugging Face names loads too.

:meth:`DINOv3Backbone.forward_layers` returns block outputs exactly as Meta's
``get_intermediate_layers(x, n=[...], norm=True)`` computes them (all tokens: CLS, registers,
patches) and stops after the deepest requested block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from cvgl.core.errors import UserError
from cvgl.extract.weight_files import HF_CONFIG, HF_INDEX, weight_files
from torch import Tensor, nn

FACETS: tuple[str, ...] = ("token", "query", "key", "value")
"""What ``forward_layers`` can return for a block: its normed output, or its attention projections."""


@dataclass(frozen=True)
class DINOv3Variant:
    """Architecture of one DINOv3 ViT, in Meta's terms (``dinov3/hub/backbones.py``).

    ``intermediate_size`` is the FFN hidden width as it appears in the checkpoint. Meta derives it from
    ``ffn_ratio``: ``int(hidden_size * ffn_ratio)`` for the GELU MLP; for SwiGLU that number times 2/3,
    rounded up to a multiple of ``ffn_align`` (see :func:`meta_intermediate_size`).
    """

    name: str
    hidden_size: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" (fc1 -> GELU -> fc2) or "swiglu" (w3(silu(w1 x) * w2 x))
    ffn_ratio: float
    intermediate_size: int
    ffn_align: int = 8  # Meta's "swiglu" aligns to 8, "swiglu64" (7B) to 64
    qkv_bias: bool = True  # bias on q and v; Meta masks the k part of the qkv bias to zero
    layerscale_init: float = 1e-5  # only used by random init: loaded checkpoints carry their gammas
    num_register_tokens: int = 4  # Meta calls them storage tokens
    patch_size: int = 16
    rope_theta: float = 100.0  # RoPE base; periods = theta ** (2 i / (head_dim / 2)), i < head_dim / 4
    rope_rescale: float = 2.0  # train-time coordinate augmentation only; never active here
    layer_norm_eps: float = 1e-5  # Meta's "layernormbf16" is a plain LayerNorm with eps 1e-5

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.hidden_size // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which come before the patch tokens."""
        return 1 + self.num_register_tokens

    def hf_config(self) -> Any:
        """The transformers ``DINOv3ViTConfig`` with this architecture (SDPA attention)."""
        from transformers import DINOv3ViTConfig

        config = DINOv3ViTConfig(
            patch_size=self.patch_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.depth,
            num_attention_heads=self.num_heads,
            hidden_act="silu" if self.ffn == "swiglu" else "gelu",
            layer_norm_eps=self.layer_norm_eps,
            rope_theta=self.rope_theta,
            query_bias=self.qkv_bias,
            key_bias=False,
            value_bias=self.qkv_bias,
            proj_bias=True,
            mlp_bias=True,
            layerscale_value=self.layerscale_init,
            use_gated_mlp=self.ffn == "swiglu",
            num_register_tokens=self.num_register_tokens,
            pos_embed_shift=None,
            pos_embed_jitter=None,
            pos_embed_rescale=self.rope_rescale,
        )
        config._attn_implementation = "sdpa"
        return config


def meta_intermediate_size(hidden_size: int, ffn: str, ffn_ratio: float, ffn_align: int = 8) -> int:
    """FFN hidden width the way Meta's ``SelfAttentionBlock`` / ``SwiGLUFFN`` compute it."""
    hidden = int(hidden_size * ffn_ratio)
    if ffn == "mlp":
        return hidden
    d = int(hidden * 2 / 3)
    return d + (-d % ffn_align)


def _variant(
    name: str, hidden: int, depth: int, heads: int, ffn: str, ratio: float, inter: int, **kw: Any
) -> DINOv3Variant:
    return DINOv3Variant(name, hidden, depth, heads, ffn, ratio, inter, **kw)


VARIANTS: dict[str, DINOv3Variant] = {
    v.name: v
    for v in (
        _variant("dinov3_vits16", 384, 12, 6, "mlp", 4.0, 1536),
        _variant("dinov3_vits16plus", 384, 12, 6, "swiglu", 6.0, 1536),
        _variant("dinov3_vitb16", 768, 12, 12, "mlp", 4.0, 3072),
        _variant("dinov3_vitl16", 1024, 24, 16, "mlp", 4.0, 4096),
        _variant("dinov3_vitl16plus", 1024, 24, 16, "swiglu", 6.0, 4096),
        _variant("dinov3_vith16plus", 1280, 32, 20, "swiglu", 6.0, 5120),
        _variant("dinov3_vit7b16", 4096, 40, 32, "swiglu", 3.0, 8192, ffn_align=64, qkv_bias=False),
    )
}
"""Meta's seven DINOv3 ViT backbones by hub name (all patch 16, 4 registers, RoPE base 100)."""

_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(DINOv3Variant) if f.name != "name")


def resolve_variant(name: str, arch_overrides: Mapping[str, Any] | None = None) -> DINOv3Variant:
    """The variant called ``name`` with ``arch_overrides`` applied and checked.

    Changing the width, FFN kind or ratio without giving ``intermediate_size`` recomputes it with
    Meta's rule, so ``{"hidden_size": 64, "num_heads": 2}`` gives a consistent tiny model.
    """
    if name not in VARIANTS:
        raise UserError(f"unknown DINOv3 backbone {name!r}; use one of {', '.join(VARIANTS)}")
    base = VARIANTS[name]
    overrides = dict(arch_overrides or {})
    unknown = sorted(set(overrides) - set(_OVERRIDABLE))
    if unknown:
        raise UserError(
            f"unknown arch_overrides key(s) {', '.join(unknown)} for {name}; valid keys: {', '.join(_OVERRIDABLE)}"
        )
    if not overrides:
        return base
    if "intermediate_size" not in overrides and {"hidden_size", "ffn", "ffn_ratio", "ffn_align"} & set(
        overrides
    ):
        merged = {**dataclasses.asdict(base), **overrides}
        overrides["intermediate_size"] = meta_intermediate_size(
            int(merged["hidden_size"]),
            str(merged["ffn"]),
            float(merged["ffn_ratio"]),
            int(merged["ffn_align"]),
        )
    v = dataclasses.replace(base, **overrides)
    for field in ("hidden_size", "depth", "num_heads", "intermediate_size", "patch_size", "ffn_align"):
        value = getattr(v, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"arch_overrides.{field} must be a positive integer, got {value!r}")
    if not isinstance(v.num_register_tokens, int) or v.num_register_tokens < 0:
        raise UserError(
            f"arch_overrides.num_register_tokens must be an integer >= 0, got {v.num_register_tokens!r}"
        )
    if v.ffn not in ("mlp", "swiglu"):
        raise UserError(f"arch_overrides.ffn must be 'mlp' or 'swiglu', got {v.ffn!r}")
    # RoPE rotates pairs of channels along two axes, so each head needs a multiple of 4 channels.
    if v.hidden_size % (4 * v.num_heads):
        raise UserError(
            f"arch_overrides give hidden_size {v.hidden_size} and num_heads {v.num_heads}; "
            "hidden_size must be a multiple of 4 * num_heads"
        )
    return v


class DINOv3Backbone(nn.Module):
    """A frozen DINOv3 ViT that returns normed tokens (or attention facets) of chosen blocks.

    Attributes:
        name: Meta's variant name, e.g. ``"dinov3_vith16plus"``.
        variant: the full architecture (after ``arch_overrides``).
        patch_size, hidden_size, depth: as in the variant.
        num_prefix_tokens: 1 (CLS) + the register tokens, which precede the patch tokens.
        model: the underlying transformers ``DINOv3ViTModel``.
        cuda_autocast_dtype: autocast dtype on CUDA (bfloat16); None runs float32 there as well.
    """

    def __init__(self, variant: DINOv3Variant, model: nn.Module, source: str) -> None:
        super().__init__()
        self.variant = variant
        self.name = variant.name
        self.patch_size = variant.patch_size
        self.hidden_size = variant.hidden_size
        self.depth = variant.depth
        self.num_register_tokens = variant.num_register_tokens
        self.num_prefix_tokens = variant.num_prefix_tokens
        self.source = source  # where the weights came from, for logs
        # On CUDA the forward runs under autocast in this dtype; None keeps float32 there too (GeoAlign's
        # released features were computed without autocast, in float32).
        self.cuda_autocast_dtype: torch.dtype | None = torch.bfloat16
        self.model = model
        self.model.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DINOv3Backbone:
        """Stay in eval mode: the backbone is frozen and RoPE augments coordinates when training."""
        return super().train(False)

    def _check_inputs(self, pixel_values: Tensor, layers: Sequence[int], facet: str) -> list[int]:
        if facet not in FACETS:
            raise UserError(f"unknown facet {facet!r}; use one of {', '.join(FACETS)}")
        if not isinstance(pixel_values, Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            shape = (
                list(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            )
            raise UserError(f"{self.name} expects images as a [B, 3, H, W] tensor, got {shape}")
        h, w = pixel_values.shape[-2:]
        if h % self.patch_size or w % self.patch_size or h == 0 or w == 0:
            raise UserError(
                f"{self.name} needs image height and width that are multiples of {self.patch_size}, got {h}x{w}; "
                f"resize or crop the images to a multiple of {self.patch_size}"
            )
        if isinstance(layers, int) or not isinstance(layers, Iterable):
            raise UserError(f"layers must be a list of block indices, got {layers!r}")
        picked: list[int] = []
        bad = False
        for layer in layers:
            try:
                index = operator.index(layer)  # ints, numpy ints; not floats or bools' look-alikes
            except TypeError:
                bad = True
                continue
            bad |= isinstance(layer, bool) or not 0 <= index < self.depth
            if index not in picked:
                picked.append(index)
        if not picked or bad:
            raise UserError(
                f"layers {list(layers)!r} are not valid for {self.name}: give one or more block indices "
                f"from 0 to {self.depth - 1} (counted from 0)"
            )
        return picked

    @torch.inference_mode()
    def forward_layers(
        self, pixel_values: Tensor, layers: Sequence[int], facet: str = "token"
    ) -> dict[int, Tensor]:
        """Tokens of several blocks in one forward pass.

        Args:
            pixel_values: ``[B, 3, H, W]`` normalized images; H and W multiples of the patch size.
                Moved to the backbone's device.
            layers: block indices counted from 0 (Meta's ``n=[...]``; GeoAlign's ``--desc_layer``).
            facet: ``"token"``: the output of block L passed through the final LayerNorm, exactly
                Meta's ``get_intermediate_layers(x, n=[L], norm=True)``. ``"query"``, ``"key"``,
                ``"value"``: the attention projections inside block L, computed on its LayerNorm'd
                input, heads concatenated, before RoPE (what GeoAlign's qkv hook captures; the key has
                no bias because Meta masks it to zero). No final norm is applied to facets.

        Returns:
            ``{L: Tensor[B, 1 + registers + H/p * W/p, C]}``, tokens ordered CLS, registers, patches
            (row-major). On CPU everything runs in float32; on CUDA under bf16 autocast (see
            ``cuda_autocast_dtype``), so facets come back in bfloat16 there (pooling computes in float32
            either way; tokens leave the final LayerNorm in float32).
        """
        wanted = self._check_inputs(pixel_values, layers, facet)
        device = next(self.model.parameters()).device
        x = pixel_values.to(device=device, dtype=torch.float32)
        autocast = (
            torch.autocast(device_type="cuda", dtype=self.cuda_autocast_dtype)
            if device.type == "cuda" and self.cuda_autocast_dtype is not None
            else contextlib.nullcontext()
        )
        deepest = max(wanted)
        out: dict[int, Tensor] = {}
        with autocast:
            hidden = self.model.embeddings(x)
            position = self.model.rope_embeddings(x)
            for index, block in enumerate(self.model.model.layer[: deepest + 1]):
                if facet != "token" and index in wanted:
                    projection = getattr(block.attention, f"{facet[0]}_proj")
                    out[index] = projection(block.norm1(hidden))
                    if index == deepest:
                        break  # a facet of the deepest block needs nothing after its projections
                hidden = block(hidden, position_embeddings=position)
                if facet == "token" and index in wanted:
                    out[index] = self.model.norm(hidden)
        return {layer: out[layer] for layer in wanted}

    def forward(self, pixel_values: Tensor, layers: Sequence[int], facet: str = "token") -> dict[int, Tensor]:
        """Same as :meth:`forward_layers`."""
        return self.forward_layers(pixel_values, layers, facet)

    def extra_repr(self) -> str:
        v = self.variant
        return f"name={v.name}, width={v.hidden_size}, depth={v.depth}, heads={v.num_heads}, ffn={v.ffn}, source={self.source}"


# ----------------------------------------------------------------------------------------------------
# Loading


def load_dinov3(
    name: str,
    weights: str | Path | None = None,
    *,
    seed: int = 0,
    arch_overrides: Mapping[str, Any] | None = None,
) -> DINOv3Backbone:
    """Build the DINOv3 backbone ``name`` and fill it with local weights (never downloads).

    Args:
        name: one of :data:`VARIANTS`, e.g. ``"dinov3_vith16plus"``.
        weights: a Hugging Face folder (``config.json`` + ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``), or a single checkpoint file: Meta's original ``.pth``
            (``torch.save`` of the state dict) or a ``.safetensors`` file, in Meta's or Hugging Face's
            key names. ``None`` builds a random model, deterministic by ``seed``.
        seed: seeds the random init (ignored when weights are given); the global RNG is left as it was.
        arch_overrides: changes to the variant, e.g. ``{"depth": 4}`` for a tiny demo model. Field
            names of :class:`DINOv3Variant`.

    Raises:
        UserError: unknown name, unreadable file, or a checkpoint that does not fit the variant (the
            message names the parameter and both shapes, or the missing/unexpected keys).
    """
    variant = resolve_variant(name, arch_overrides)
    config = variant.hf_config()
    from transformers import DINOv3ViTModel

    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = DINOv3ViTModel(config)
        return DINOv3Backbone(variant, model.float().eval(), source=f"random(seed={int(seed)})")

    path = Path(weights).expanduser()
    state, hf_config_json = _read_checkpoint(path)
    if _detect_layout(state, path) == "meta":
        meta_shapes, meta_optional = _meta_expected_shapes(variant)
        _check_shapes(state, meta_shapes, meta_optional, variant, path)
        state = _meta_to_hf(state, variant, path)
    else:
        state = {_normalize_hf_key(k): t for k, t in state.items()}
    head_dim = variant.head_dim
    inv_freq = state.pop("rope_embeddings.inv_freq", None)

    # Build without initializing (weights are about to be replaced; matters for the 7B model).
    with torch.device("meta"):
        model = DINOv3ViTModel(config)
    expected = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    _check_shapes(state, expected, {}, variant, path)
    if hf_config_json is not None:
        _check_hf_config(hf_config_json, variant, path)
    # Own float32 copies: never keep parameters backed by a memory-mapped file that may change later.
    state = {k: state[k].to(dtype=torch.float32, copy=True).contiguous() for k in list(state)}
    model.load_state_dict(state, strict=True, assign=True)
    # inv_freq is a non-persistent buffer, left on the meta device: recompute it, or take Meta's periods.
    if inv_freq is None:
        inv_freq = 1.0 / variant.rope_theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    elif tuple(inv_freq.shape) != (head_dim // 4,):
        raise UserError(
            f"weights do not fit {variant.name}: rope inverse frequencies are {list(inv_freq.shape)}, "
            f"expected [{head_dim // 4}]; pick the backbone.name that matches the checkpoint ({path})"
        )
    model.rope_embeddings.inv_freq = inv_freq.to(torch.float32).contiguous()
    return DINOv3Backbone(variant, model.eval(), source=str(path))


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Tensors of a checkpoint file or folder, plus the folder's config.json when there is one.

    The files read are those :func:`weight_files` names (checked to be regular files), the same ones
    the cache key hashes.
    """
    if not os.path.lexists(path):
        raise UserError(f"DINOv3 weights not found: {path}; give a Hugging Face folder or Meta's .pth file")
    files = weight_files(path)
    if files == [""]:
        if path.suffix == ".safetensors":
            return _read_safetensors(path), None
        return _read_torch(path), None
    config = None
    if HF_CONFIG in files:
        config_file = path / HF_CONFIG
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise UserError(f"cannot read {config_file}: {err}; restore the folder's config.json") from None
    state: dict[str, Tensor] = {}
    for name in files:
        if name not in (HF_CONFIG, HF_INDEX):
            state.update(_read_safetensors(path / name))
    return state, config


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"checkpoint shard {path} is missing; download the complete checkpoint folder")
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise UserError(
            f"cannot read {path} as safetensors ({err}); the file is corrupt or not safetensors"
        ) from err


def _read_torch(path: Path) -> dict[str, Tensor]:
    """A ``torch.save``d state dict, loaded with ``weights_only=True`` (never runs pickled code)."""
    try:
        try:
            # mmap keeps a multi-GB checkpoint out of RAM until its tensors are used.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as err:
        raise UserError(
            f"cannot load {path} as a plain tensor state dict ({type(err).__name__}: {str(err).splitlines()[0]}); "
            "give Meta's original .pth or a Hugging Face folder"
        ) from err
    # Training checkpoints wrap the state dict; released ones are the plain dict.
    for wrapper in ("model", "state_dict", "teacher"):
        if (
            isinstance(obj, dict)
            and isinstance(obj.get(wrapper), dict)
            and not any(isinstance(v, Tensor) for v in obj.values())
        ):
            obj = obj[wrapper]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise UserError(
            f"{path} does not hold a state dict of tensors; give Meta's original .pth or a Hugging Face folder"
        )
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def _detect_layout(state: Mapping[str, Tensor], path: Path) -> str:
    if any(k.startswith("blocks.") for k in state) or "storage_tokens" in state:
        return "meta"
    if any(k.startswith(("embeddings.", "layer.", "model.layer.")) for k in state):
        return "hf"
    sample = ", ".join(sorted(state)[:3])
    raise UserError(
        f"{path} is neither a Meta DINOv3 state dict (blocks.N.*) nor a Hugging Face one (embeddings.*, layer.N.*); "
        f"its keys start {sample}"
    )


def _normalize_hf_key(key: str) -> str:
    # Checkpoints on the Hub (and save_pretrained) write "layer.N..."; the module tree is "model.layer.N...".
    return "model." + key if key.startswith("layer.") else key


def _meta_expected_shapes(v: DINOv3Variant) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Shapes of Meta's state dict for variant ``v``: (required tensors, tensors that may be absent).

    Optional: ``rope_embed.periods`` (a buffer), ``attn.qkv.bias_mask`` (only with a qkv bias) and
    ``local_cls_norm`` (ViT-L SAT-493M and 7B; Meta uses it on local crops in training only).
    """
    c, i, r, p = v.hidden_size, v.intermediate_size, v.num_register_tokens, v.patch_size
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, c),
        "mask_token": (1, c),
        "patch_embed.proj.weight": (c, 3, p, p),
        "patch_embed.proj.bias": (c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    optional: dict[str, tuple[int, ...]] = {
        "rope_embed.periods": (v.head_dim // 4,),
        "local_cls_norm.weight": (c,),
        "local_cls_norm.bias": (c,),
    }
    if r:
        shapes["storage_tokens"] = (1, r, c)
    ffn = {"fc1.weight": (i, c), "fc1.bias": (i,), "fc2.weight": (c, i), "fc2.bias": (c,)}
    if v.ffn == "swiglu":
        ffn = {
            "w1.weight": (i, c),
            "w1.bias": (i,),
            "w2.weight": (i, c),
            "w2.bias": (i,),
            "w3.weight": (c, i),
            "w3.bias": (c,),
        }
    for n in range(v.depth):
        b = f"blocks.{n}."
        shapes.update(
            {
                b + k: (c,)
                for k in (
                    "norm1.weight",
                    "norm1.bias",
                    "norm2.weight",
                    "norm2.bias",
                    "ls1.gamma",
                    "ls2.gamma",
                )
            }
        )
        shapes.update(
            {b + "attn.qkv.weight": (3 * c, c), b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,)}
        )
        if v.qkv_bias:
            shapes[b + "attn.qkv.bias"] = (3 * c,)
            optional[b + "attn.qkv.bias_mask"] = (3 * c,)
        shapes.update({b + "mlp." + k: s for k, s in ffn.items()})
    return shapes, optional


def _check_shapes(
    state: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    optional: Mapping[str, tuple[int, ...]],
    v: DINOv3Variant,
    path: Path,
) -> None:
    """UserError naming the first tensor of the wrong shape, else any missing or unexpected tensors."""
    hint = "pick the backbone.name that matches the checkpoint" + (
        " (or fix arch_overrides)" if v != VARIANTS[v.name] else ""
    )
    for key, tensor in state.items():
        shape = expected.get(key, optional.get(key))
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise UserError(
                f"weights do not fit {v.name}: {key} is {list(tensor.shape)}, expected {list(shape)}; {hint} ({path})"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in optional]
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label} {', '.join(keys[:3])}{more}")
        raise UserError(f"weights do not fit {v.name}: {'; '.join(parts)}; {hint} ({path})")


# Meta name -> transformers name, inside blocks.N. (checked by numbers against Meta's code, see
# benchmarks/README_dinov3.md, and against an independent forward in tests/unit/test_dinov3.py).
_META_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
    "mlp.w1.weight": "mlp.gate_proj.weight",  # SwiGLU: silu is applied to w1's output ...
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",  # ... which multiplies w2's
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}


def _meta_to_hf(state: Mapping[str, Tensor], v: DINOv3Variant, path: Path) -> dict[str, Tensor]:
    """Rename Meta's keys (already shape-checked) to transformers', split qkv, drop the masked key bias.

    ``local_cls_norm`` is dropped (training only). ``rope_embed.periods`` becomes
    ``rope_embeddings.inv_freq = 1 / periods`` so RoPE uses the checkpoint's own frequencies.
    """
    c = v.hidden_size
    out: dict[str, Tensor] = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.mask_token": state["mask_token"].reshape(1, 1, c),
        "embeddings.register_tokens": state["storage_tokens"]
        if v.num_register_tokens
        else torch.zeros(1, 0, c),
        "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"],
        "norm.weight": state["norm.weight"],
        "norm.bias": state["norm.bias"],
    }
    if "rope_embed.periods" in state:
        periods = state["rope_embed.periods"].to(torch.float32)
        if not bool(torch.isfinite(periods).all()) or bool((periods <= 0).any()):
            raise UserError(
                f"{path}: rope_embed.periods holds non-positive or non-finite values; the checkpoint is corrupt"
            )
        out["rope_embeddings.inv_freq"] = 1.0 / periods
    for n in range(v.depth):
        src, dst = f"blocks.{n}.", f"model.layer.{n}."
        for meta_key, hf_key in _META_BLOCK_RENAMES.items():
            if src + meta_key in state:
                out[dst + hf_key] = state[src + meta_key]
        # Meta's qkv rows are [q; k; v], each C rows with the heads contiguous, like q/k/v_proj.
        q, k, w = state[src + "attn.qkv.weight"].chunk(3, dim=0)
        out[dst + "attention.q_proj.weight"] = q
        out[dst + "attention.k_proj.weight"] = k
        out[dst + "attention.v_proj.weight"] = w
        if v.qkv_bias:
            bias = state[src + "attn.qkv.bias"]
            mask = state.get(src + "attn.qkv.bias_mask")
            if mask is not None:
                bias = bias * mask.to(bias.dtype)  # what LinearKMaskedBias.forward adds
            q_bias, k_bias, v_bias = bias.chunk(3)
            # Released models mask the key bias to zero; transformers' config carries no key bias.
            if bool(k_bias.ne(0).any()):
                raise UserError(
                    f"{path}: blocks.{n}.attn.qkv has a non-zero key bias (no bias_mask zeroing it); "
                    "this is not a released DINOv3 layout and cannot be loaded"
                )
            out[dst + "attention.q_proj.bias"] = q_bias
            out[dst + "attention.v_proj.bias"] = v_bias
    return out


def _check_hf_config(config: Mapping[str, Any], v: DINOv3Variant, path: Path) -> None:
    """A Hugging Face folder's config.json must describe the same architecture as the variant."""
    if config.get("model_type") not in (None, "dinov3_vit"):
        raise UserError(
            f"{path}/config.json is a {config.get('model_type')!r} model, not dinov3_vit; give a DINOv3 ViT folder"
        )
    ours = v.hf_config()
    # The tensor shapes were checked already; these fields do not show in shapes.
    for field in ("num_attention_heads", "hidden_act", "layer_norm_eps", "rope_theta", "num_register_tokens"):
        if field not in config:
            continue
        found, expected = config[field], getattr(ours, field)
        same = (
            math.isclose(float(found), float(expected), rel_tol=1e-9)
            if isinstance(expected, float)
            else found == expected
        )
        if not same:
            raise UserError(
                f"weights do not fit {v.name}: config.json {field} is {found!r}, expected {expected!r}; "
                f"pick the backbone.name that matches the checkpoint ({path})"
            )
