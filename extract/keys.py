"""What goes into an extraction entry's cache key, and the checks that run before anything is hashed.

An entry's key is the content key of :func:`entry_spec`: the backbone's identity (variant, weights
digest, architecture overrides), the compute dtype, the preprocessing (:class:`Preprocess`), the layer
and facet, the pooling, the storage dtype and the image list. Fields added after the first release
appear only when they differ from their old defaults, so an entry extracted before keeps its key;
``tests/e2e/test_keys_pinned.py`` pins the keys of a fixed configuration.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.cache.naming import extracted_alias
from cvgl.cache.store import CacheStore, check_alias
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.core.keys import image_list_digest
from cvgl.core.path_errors import check_path_usable, show_path
from cvgl.datasets.layouts import ImageList
from cvgl.datasets.view_roles import view_kind
from cvgl.extract.weight_files import weights_digest

Layer = int | str


def entry_alias(cfg: Config, view: str, layer: Layer, n_views: int) -> str:
    """The alias of the entry of ``view`` at ``layer`` (checked to be a valid alias)."""
    return check_alias(extracted_alias(cfg, view, layer, n_views))


def is_vgg(cfg: Config) -> bool:
    """Whether ``backbone.name`` is VGG16 (layers by name, conv maps) rather than a DINOv3 variant."""
    return cfg.backbone.name == "vgg16"


def vgg_arch(cfg: Config) -> dict:
    """VGG16's architecture options with defaults filled in (they are part of the key)."""
    arch = dict(cfg.backbone.arch)
    unknown = sorted(set(arch) - {"pool"})
    if unknown:
        raise UserError(
            f"unknown backbone.arch key(s) {', '.join(unknown)} for vgg16; valid: pool (ceil|floor)"
        )
    pool = arch.get("pool", "ceil")
    if pool not in ("ceil", "floor"):
        raise UserError(
            f"backbone.arch.pool={pool!r} for vgg16; use ceil (CVFT's TensorFlow 'SAME') or floor (torchvision)"
        )
    return {"pool": pool}


def check_layers(cfg: Config) -> list[Layer]:
    """``backbone.layers`` without repeats, checked against the backbone before anything is hashed."""
    layers = list(dict.fromkeys(cfg.backbone.layers))
    if not layers:
        raise UserError(
            "backbone.layers is empty; give at least one block index, e.g. backbone.layers=[26,28]"
        )
    if is_vgg(cfg):
        from cvgl.extract.vgg16 import LAYER_END

        if cfg.backbone.facet != "token":
            raise UserError(
                f"backbone.facet={cfg.backbone.facet} is a DINOv3 option; leave it at token for vgg16"
            )
        if cfg.pooling.name == "cls":
            raise UserError(
                "pooling.name=cls needs a CLS token; vgg16 takes max, avg, gem or none (conv maps)"
            )
        vgg_arch(cfg)
        bad = [L for L in layers if L not in LAYER_END]
        if bad:
            raise UserError(
                f"backbone.layers {bad} are not VGG16 layers; use names such as backbone.layers=[conv5_3] "
                f"(any of {', '.join(LAYER_END)})"
            )
        return [str(L) for L in layers]
    from cvgl.extract.dinov3 import resolve_variant

    if cfg.pooling.name == "none":
        raise UserError(
            "pooling.name=none (spatial maps) is for backbone.name=vgg16; pick gem, avg, max or cls for DINOv3"
        )
    depth = resolve_variant(cfg.backbone.name, cfg.backbone.arch or None).depth
    bad = [L for L in layers if not isinstance(L, int) or not 0 <= L < depth]
    if bad:
        raise UserError(
            f"backbone.layers {bad} are not block indices of {cfg.backbone.name} (integers 0..{depth - 1}), "
            "e.g. backbone.layers=[26,28]"
        )
    return layers


def backbone_identity(cfg: Config, store: CacheStore) -> dict:
    """What identifies the network in a key: variant, weights digest (or random-init seed), overrides."""
    b = cfg.backbone
    if b.weights:
        from cvgl.extract.hub import resolve_weights

        # A Hub repo id is keyed by the digest of the files it resolves to, like a local folder.
        p = Path(resolve_weights(b.weights))
        check_path_usable(p, "backbone weights", "set backbone.weights=PATH to a checkpoint")
        if not os.path.lexists(p):
            raise UserError(f"backbone weights {show_path(p)} do not exist; set backbone.weights=PATH to a checkpoint")
        # Checked by name and type first; only the files the loader reads are hashed.
        digest = weights_digest(p, store.memo, folder_allowed=not is_vgg(cfg))
    else:
        digest = f"random-init:seed={b.seed}"
    arch = vgg_arch(cfg) if is_vgg(cfg) else dict(sorted(b.arch.items()))
    return {"name": b.name, "weights": digest, "arch": arch}


@dataclass(frozen=True)
class Preprocess:
    """How one view's images become network input."""

    size: tuple[int, int] | None  # (h, w); None = native
    resample: str  # bicubic | box
    normalization: str  # meanstd | caffe_bgr
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def spec(self, raw_resize: Any) -> dict:
        """The key's preprocessing part. Fields beyond the original three appear only when they differ
        from the defaults, so entries extracted before they existed keep their keys."""
        out: dict[str, Any] = {
            "resize": raw_resize,
            "mean": list(self.mean or []),
            "std": list(self.std or []),
        }
        if self.resample != "bicubic":
            out["resample"] = self.resample
        if self.normalization != "meanstd":
            out = {"resize": raw_resize, "normalization": self.normalization}
            if self.resample != "bicubic":
                out["resample"] = self.resample
        return out


def _cvft_role(view: str) -> str:
    # CVFT's two sizes are for ground panoramas and aerial tiles; a drone view is neither.
    kind = view_kind(view)
    if kind in ("ground", "aerial"):
        return kind
    raise UserError(
        f"preprocess.recipe=cvft cannot tell whether view {view!r} is ground or aerial; "
        f"set preprocess.resize_by_view={{{view}: [h, w]}}"
    )


def view_preprocess(cfg: Config, view: str) -> tuple[Preprocess, Any]:
    """The preprocessing of ``view`` and the resize value its key records (int, [h, w] or None)."""
    from cvgl.extract.images import parse_resize

    pp = cfg.preprocess
    if view in pp.resize_by_view:
        raw = pp.resize_by_view[view]
    elif pp.recipe == "cvft":
        from cvgl.extract.vgg16 import CVFT_AERIAL_SIZE, CVFT_GROUND_SIZE

        raw = list(CVFT_GROUND_SIZE if _cvft_role(view) == "ground" else CVFT_AERIAL_SIZE)
    else:
        raw = pp.resize
    size = parse_resize(raw)
    # One spelling per size in the key: 224 and [224, 224] are the same rule.
    key_resize = None if size is None else (size[0] if size[0] == size[1] else [size[0], size[1]])
    meanstd = pp.normalization == "meanstd"
    prep = Preprocess(
        size=size,
        resample="box" if pp.recipe == "cvft" else "bicubic",
        normalization=pp.normalization,
        mean=tuple(pp.mean) if meanstd else None,
        std=tuple(pp.std) if meanstd else None,
    )
    return prep, key_resize


def pooling_spec(cfg: Config) -> dict:
    """The key's pooling part; ``use_cls`` appears only when set, so older keys stay."""
    p = cfg.pooling
    if p.name == "none":
        return {"name": "none"}
    out: dict[str, Any] = {"name": p.name, "p": p.p, "eps": p.eps, "local_norm": p.local_norm}
    if p.use_cls and p.name != "cls":
        out["use_cls"] = True
    return out


def entry_spec(
    cfg: Config,
    backbone: dict,
    images: ImageList,
    layer: Layer,
    dtype_compute: str,
    digest: str,
) -> dict:
    """The spec whose content key is the key of ``images``' entry at ``layer``."""
    prep, key_resize = view_preprocess(cfg, images.view)
    # torch.compile fuses kernels, which moves results in the last bits: a compiled run is its own
    # entry (the field appears only when set, so existing keys stay).
    compiled = {"compiled": True} if cfg.backbone.compile else {}
    return {
        **compiled,
        "kind": "descriptors",
        "backbone": backbone,
        "compute_dtype": dtype_compute,
        "preprocess": prep.spec(key_resize),
        "layer": layer,
        "facet": cfg.backbone.facet,
        "pooling": pooling_spec(cfg),
        "storage_dtype": cfg.extract.dtype,
        "images": {
            "digest": digest,
            "count": len(images),
            "strict": cfg.dataset.strict_digest,
            **_distractor_spec(images),
            **images.key_fields,  # empty except for VIGOR lists: existing keys unchanged
        },
    }


def images_digest(images: ImageList, *, strict: bool = False) -> str:
    """The digest of a list's images in its entry's key: the files' paths, sizes and mtimes (strict: their
    contents); for a map gallery, its tile source's digest (the maps' contents and the tiling)."""
    if images.tiles is not None:
        return images.tiles.digest
    return image_list_digest(images.root, images.names, strict=strict)


def _distractor_spec(images: ImageList) -> dict:
    """Which items are 160k-gallery distractors (label -2), when there are any.

    The key covers image names, not labels; the stored labels of such lists changed from -1 (junk)
    to -2 (distractor), so these lists get their own key and an entry cached with the old labels is
    recomputed instead of being reused with them. Lists without distractors keep their keys.
    """
    from cvgl.datasets.layouts import DISTRACTOR

    mask = np.asarray(images.labels) == DISTRACTOR
    if not mask.any():
        return {}
    return {"distractors": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()}


__all__ = [
    "Layer",
    "Preprocess",
    "backbone_identity",
    "check_layers",
    "entry_alias",
    "entry_spec",
    "images_digest",
    "is_vgg",
    "pooling_spec",
    "view_preprocess",
    "vgg_arch",
]
