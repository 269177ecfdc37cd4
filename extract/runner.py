"""The extraction runner: image lists → backbone (several layers, one pass) → pooling → cache entries.

One entry per (image list, layer). Entries already in the cache are reused without loading the
backbone; an interrupted extraction resumes from the shards it completed.

How the work is laid out, and why:

* **Shards are the unit of work.** Shard ``i`` of an entry covers images ``[i·S, (i+1)·S)``
  (``S = extract.shard_rows``) and batches never cross a shard boundary, so a shard's numbers do not
  depend on which process computed it, in which order, or whether the run was interrupted. At native
  size (no resize rule) a shard's images are batched by size, since a batch stacks one size only.
* **Ranks.** Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r`` of ``W`` computes the shards
  ``i ≡ r (mod W)`` and writes them itself; rank 0 holds the entry locks, and once every rank has
  passed a barrier it re-checks every shard file and writes the manifests. ``extract.launcher=torchrun``
  starts such a job from a plain ``pipeline extract``.
* **Pipelining.** DataLoader worker processes decode images ahead of the backbone (pinned memory and
  non-blocking copies on CUDA); the main thread only runs the network and pooling; a writer thread
  assembles whole shards and writes them to HDF5 while the next batches compute. The queue to the
  writer is bounded and it buffers at most one shard per layer, so memory depends on the batch and
  shard size, never on the dataset size. An error in the writer stops the main loop with that error.
* **Bad images.** A corrupt image stops the run with its path; complete shards stay and a rerun
  resumes. With ``extract.skip_bad=true`` such images are left out of their shard (which still covers
  the same image range, so resume stays exact) and listed in the manifest's ``extra.skipped``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cache.keys import content_key, image_list_digest, weights_digest
from cache.store import CacheStore, EntryWriter, check_alias
from configs.errors import UserError
from configs.naming import dataset_views, extracted_alias
from configs.schema import Config
from extract.datasets import ImageList, list_images, write_semi_positives

ProgressFn = Callable[[str, int, int], None]  # (description, done, total)
Layer = int | str

#: ``extract.batch_size=auto`` on a CPU: no device memory to fill, so the default batch.
AUTO_BATCH_CPU = 16
#: Batches queued between the compute loop and the writer thread.
WRITER_QUEUE = 4
#: Timeout of the rank barriers: a rank may wait for the slowest one through a whole image list.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass
class ExtractedEntry:
    view: str
    layer: Layer
    key: str
    alias: str
    count: int
    reused: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for but CUDA is not available; use device=auto or cpu")
    return torch.device(name)


def compute_dtype(cfg: Config, device: torch.device) -> str:
    if cfg.backbone.dtype != "auto":
        return cfg.backbone.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


# --------------------------------------------------------------------------------------------------
# Ranks


@dataclass
class Ranks:
    """This process's place in a multi-process extraction (one process: rank 0 of 1).

    ``group`` is a gloo group for control messages (barriers, small objects): the work itself needs
    no collective, so this works the same with nccl as the default backend.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out


def ranks_from_env(device_name: str = "auto") -> Ranks:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``), if any.

    Backend: nccl when the ranks use CUDA, gloo otherwise; control messages always go over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist = torch.distributed
    if not dist.is_available():
        raise UserError("WORLD_SIZE is set but this torch has no torch.distributed; run one process")
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, group=group)


def rank_device(cfg: Config, ranks: Ranks) -> torch.device:
    """The device of this rank: its local GPU under torchrun, else ``backbone.device``."""
    device = resolve_device(cfg.backbone.device)
    if ranks.world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


# --------------------------------------------------------------------------------------------------
# Image lists and keys


def dataset_root(cfg: Config, store: CacheStore) -> Path:
    """The dataset folder; the synthetic layout is generated (once, deterministically) on demand."""
    ds = cfg.dataset
    if ds.layout == "synthetic":
        from extract.synthetic import make_synthetic_u1652, synthetic_summary

        params = {
            "n_locations": ds.synthetic.n_locations,
            "n_distractors": ds.synthetic.n_distractors,
            "views_per_location": ds.synthetic.views_per_location,
            "size": ds.synthetic.size,
            "seed": ds.synthetic.seed,
        }
        root = (
            Path(ds.root)
            if ds.root
            else store.root / "datasets" / f"synthetic-u1652-{content_key(params)[:16]}"
        )
        done = synthetic_summary(root)
        # Regenerating would give the same bytes but new mtimes, hence new cache keys: keep a finished copy.
        if done is None or any(done.get(k) != v for k, v in params.items()) or done.get("train_locations", 0):
            make_synthetic_u1652(root, **params)
        return root
    if not ds.root:
        raise UserError(
            f"dataset.root is not set for layout {ds.layout!r}; pass root=PATH (or dataset.root=PATH)"
        )
    return Path(ds.root)


def image_lists(cfg: Config, store: CacheStore) -> list[ImageList]:
    root = dataset_root(cfg, store)
    layout = "u1652" if cfg.dataset.layout == "synthetic" else cfg.dataset.layout
    if layout == "geoalign_release":
        raise UserError(
            "dataset.layout=geoalign_release holds GeoAlign's extracted features, not images; import them "
            "with `pipeline cache import`, or pick an image layout (u1652, sues200, cvusa, cvact, folder)"
        )
    kw = {"split": cfg.dataset.split, "altitude": cfg.dataset.altitude, "area": cfg.dataset.area}
    if layout == "folder":
        return [list_images("folder", root, v, **kw) for v in (cfg.dataset.views or ["images"])]
    return [list_images(layout, root, v, **kw) for v in dataset_views(cfg)]


def entry_alias(cfg: Config, view: str, layer: Layer, n_views: int) -> str:
    return check_alias(extracted_alias(cfg, view, layer, n_views))


def is_vgg(cfg: Config) -> bool:
    return cfg.backbone.name == "vgg16"


def _vgg_arch(cfg: Config) -> dict:
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
        from extract.vgg16 import LAYER_END

        if cfg.backbone.facet != "token":
            raise UserError(
                f"backbone.facet={cfg.backbone.facet} is a DINOv3 option; leave it at token for vgg16"
            )
        if cfg.pooling.name == "cls":
            raise UserError(
                "pooling.name=cls needs a CLS token; vgg16 takes max, avg, gem or none (conv maps)"
            )
        _vgg_arch(cfg)
        bad = [L for L in layers if L not in LAYER_END]
        if bad:
            raise UserError(
                f"backbone.layers {bad} are not VGG16 layers; use names such as backbone.layers=[conv5_3] "
                f"(any of {', '.join(LAYER_END)})"
            )
        return [str(L) for L in layers]
    from extract.dinov3 import resolve_variant

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
        from extract.hub import resolve_weights

        # A Hub repo id is keyed by the digest of the files it resolves to, like a local folder.
        p = Path(resolve_weights(b.weights))
        if not p.exists():
            raise UserError(f"backbone weights {p} do not exist; set backbone.weights=PATH to a checkpoint")
        digest = weights_digest(p, store.memo)
    else:
        digest = f"random-init:seed={b.seed}"
    arch = _vgg_arch(cfg) if is_vgg(cfg) else dict(sorted(b.arch.items()))
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
    v = view.lower()
    if any(w in v for w in ("ground", "street", "pano")):
        return "ground"
    if any(w in v for w in ("aerial", "satellite", "sat")):
        return "aerial"
    raise UserError(
        f"preprocess.recipe=cvft cannot tell whether view {view!r} is ground or aerial; "
        f"set preprocess.resize_by_view={{{view}: [h, w]}}"
    )


def view_preprocess(cfg: Config, view: str) -> tuple[Preprocess, Any]:
    """The preprocessing of ``view`` and the resize value its key records (int, [h, w] or None)."""
    from extract.images import parse_resize

    pp = cfg.preprocess
    if view in pp.resize_by_view:
        raw = pp.resize_by_view[view]
    elif pp.recipe == "cvft":
        from extract.vgg16 import CVFT_AERIAL_SIZE, CVFT_GROUND_SIZE

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


def _distractor_spec(images: ImageList) -> dict:
    """Which items are 160k-gallery distractors (label -2), when there are any.

    The key covers image names, not labels; the stored labels of such lists changed from -1 (junk)
    to -2 (distractor), so these lists get their own key and an entry cached with the old labels is
    recomputed instead of being reused with them. Lists without distractors keep their keys.
    """
    from extract.datasets import DISTRACTOR

    mask = np.asarray(images.labels) == DISTRACTOR
    if not mask.any():
        return {}
    return {"distractors": hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()}


# --------------------------------------------------------------------------------------------------
# Backbones behind one call: images -> {layer: rows}


class ExtractModel:
    """A loaded backbone: ``model(x)`` gives ``{layer: Tensor[B, *row_shape]}`` (float32, on the device)."""

    layers: list[Layer]
    device: torch.device
    dtype: str

    def __call__(self, x: torch.Tensor) -> dict[Layer, torch.Tensor]:
        raise NotImplementedError

    def row_shape(self, layer: Layer, image_size: tuple[int, int] | None) -> tuple[int, ...]:
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
        from extract.dinov3 import load_dinov3
        from extract.pooling import pool

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
        from extract.hub import resolve_weights

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
        from extract.vgg16 import LAYER_END, load_vgg16

        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        if cfg.backbone.facet != "token":
            raise UserError(
                f"backbone.facet={cfg.backbone.facet} is a DINOv3 option; leave it at token for vgg16"
            )
        if cfg.pooling.name == "cls":
            raise UserError(
                "pooling.name=cls needs a CLS token; vgg16 takes max, avg, gem or none (conv maps)"
            )
        bad = [L for L in cfg.backbone.layers if L not in LAYER_END]
        if bad:
            raise UserError(
                f"backbone.layers {bad} are not VGG16 layers; use names such as backbone.layers=[conv5_3] "
                f"(any of {', '.join(LAYER_END)})"
            )
        self.layers = list(dict.fromkeys(str(L) for L in cfg.backbone.layers))
        self._ends = {L: LAYER_END[L] for L in self.layers}
        self.ceil = _vgg_arch(cfg)["pool"] == "ceil"
        from extract.hub import resolve_weights

        self.net = load_vgg16(resolve_weights(cfg.backbone.weights), seed=cfg.backbone.seed).to(device)
        if device.type == "cuda" and dtype == "float32":
            # float32 is in the key: keep cuDNN from running the convolutions in TF32.
            torch.backends.cudnn.allow_tf32 = False
        self.compiled = bool(cfg.backbone.compile)
        self._features = torch.compile(self._run_stack) if self.compiled else self._run_stack

    def _run_stack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stack up to the deepest requested layer, keeping each requested layer's output
        (same operations as :meth:`VGG16Backbone.forward_maps`)."""
        from torch import nn

        wanted = {end: L for L, end in self._ends.items()}
        deepest = max(wanted)
        out: dict[str, torch.Tensor] = {}
        for idx, module in enumerate(self.net.features):
            if idx > deepest:
                break
            if isinstance(module, nn.MaxPool2d):
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=self.ceil)
            elif isinstance(module, nn.ReLU):
                x = F.relu(x)
            else:
                x = module(x)
            if idx in wanted:
                out[wanted[idx]] = x
        return out

    def _pool(self, maps: torch.Tensor) -> torch.Tensor:
        p = self.cfg.pooling
        maps = maps.float()
        if p.name == "none":
            return maps
        if p.local_norm:
            maps = F.normalize(maps, dim=1)
        if p.name == "max":
            vec = maps.amax(dim=(2, 3))
        elif p.name == "avg":
            vec = maps.mean(dim=(2, 3))
        else:  # gem, as extract.vgg16.pool_maps with the configured clamp
            vec = maps.clamp(min=p.eps).pow(p.p).mean(dim=(2, 3)).pow(1.0 / p.p)
        return F.normalize(vec, dim=1)

    def __call__(self, x: torch.Tensor) -> dict[Layer, torch.Tensor]:
        with self._no_grad():
            x = x.to(self.device, non_blocking=True)
            with self._autocast():
                maps = self._features(x)
            return {L: self._pool(maps[L]) for L in self.layers}

    def row_shape(self, layer: Layer, image_size: tuple[int, int] | None) -> tuple[int, ...]:
        from extract.vgg16 import CONV_SHAPES, LAYER_END

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


# --------------------------------------------------------------------------------------------------
# Batch size


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


def plan_batches(
    shards: Sequence[int],
    shard_rows: int,
    total: int,
    batch_size: int,
    sizes: Mapping[int, Hashable] | None = None,
) -> list[list[int]]:
    """Image indices of each batch, shard by shard; a batch never crosses a shard boundary, so the
    batches of a shard (hence its floating-point results) are the same in every run.

    ``sizes`` maps each image index of these shards to its network input size. When given, the
    images of a shard are grouped by size (groups in order of first appearance, each in list order)
    and batched group by group, so every batch stacks images of one size. The grouping depends only
    on the shard's own images, so it is the same in every run, on every rank and after a resume;
    rows are still written at their list positions.
    """
    out: list[list[int]] = []
    for i in shards:
        start, end = i * shard_rows, min((i + 1) * shard_rows, total)
        if sizes is None:
            out.extend(list(range(s, min(s + batch_size, end))) for s in range(start, end, batch_size))
            continue
        groups: dict[Hashable, list[int]] = {}
        for k in range(start, end):
            groups.setdefault(sizes[k], []).append(k)
        for members in groups.values():
            out.extend(members[s : s + batch_size] for s in range(0, len(members), batch_size))
    return out


def _input_sizes(dataset: Any, indices: Sequence[int], threads: int = 8) -> dict[int, Any]:
    """``{index: (h, w) or None}`` for images at native size, read from file headers.

    Reading a header is file-system latency, not CPU work, so a few threads hide most of it on
    network storage; ``map`` keeps the result independent of which thread finishes first.
    """
    from concurrent.futures import ThreadPoolExecutor

    if len(indices) < 64:
        return {i: dataset.output_size(i) for i in indices}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-size") as pool:
        return dict(zip(indices, pool.map(dataset.output_size, indices)))


def _check_row_shapes(
    model: ExtractModel, writers: dict[Layer, EntryWriter], images: ImageList, sizes: Mapping[int, Any]
) -> None:
    """Refuse, before anything is computed, images whose rows would not fit their entry's shape
    (conv maps take their shape from the input size; pooled descriptors never do)."""
    from extract.datasets import display_name

    first: dict[Any, int] = {}
    for i, size in sizes.items():
        if size is not None:
            first.setdefault(size, i)
    for size, i in first.items():
        for L, w in writers.items():
            if tuple(model.row_shape(L, size)) != tuple(w.shape):
                raise UserError(
                    f"image {display_name(images.names[i])} is {size[0]}x{size[1]}, so its layer {L} maps "
                    f"do not have the shape {list(w.shape)} of the other images'; set preprocess.resize=N"
                )


# --------------------------------------------------------------------------------------------------
# The writer thread


@dataclass
class _Batch:
    """One computed batch on its way to the writer."""

    shard: int
    planned: list[int]  # image indices the batch was meant to hold
    rows: np.ndarray  # image indices actually computed (bad images left out), int64
    outputs: dict[Layer, torch.Tensor]  # host tensors, [len(rows), *row_shape]
    ready: Any = None  # a CUDA event to wait on before reading ``outputs``


@dataclass
class _ShardBuffer:
    index: int
    start: int
    data: np.ndarray  # [coverage, *row_shape] in the storage dtype
    filled: np.ndarray  # bool [coverage]
    skipped: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return int(self.filled.sum()) + len(self.skipped) == len(self.filled)


class ShardSink:
    """Assembles whole shards from batches and writes them (runs in the writer thread).

    Batches arrive shard by shard, so there is at most one shard buffer per layer; ``max_buffered``
    records the most rows any layer held, which tests use to check that memory stays flat.
    """

    def __init__(self, writers: dict[Layer, EntryWriter], images: ImageList) -> None:
        self.writers = writers
        self.images = images
        self.labels = np.asarray(images.labels, dtype=np.int64)
        self._bufs: dict[Layer, _ShardBuffer | None] = dict.fromkeys(writers)
        self.max_buffered: dict[Layer, int] = dict.fromkeys(writers, 0)
        self.skipped: list[str] = []
        self.written: dict[Layer, list[int]] = {L: [] for L in writers}
        self._done = {L: w.done_indices for L, w in writers.items()}  # complete before this run

    def consume(self, item: _Batch) -> None:
        if item.ready is not None:
            item.ready.synchronize()
        local = set(item.rows.tolist())
        bad = [i for i in item.planned if i not in local]
        self.skipped.extend(self.images.names[i] for i in bad)
        for L, w in self.writers.items():
            if item.shard in self._done[L]:
                continue
            buf = self._bufs[L]
            if buf is None or buf.index != item.shard:
                if buf is not None:
                    raise RuntimeError(f"shard {buf.index} of layer {L} was left incomplete")
                start, end = w.shard_range(item.shard)
                shape = (end - start, *w.shape)
                buf = _ShardBuffer(item.shard, start, np.empty(shape, w.dtype), np.zeros(end - start, bool))
                self._bufs[L] = buf
            pos = item.rows - buf.start
            if len(pos):
                # The cast to the storage dtype happens here, off the compute thread.
                buf.data[pos] = item.outputs[L].numpy()
                buf.filled[pos] = True
            buf.skipped.update(int(i) - buf.start for i in bad)
            self.max_buffered[L] = max(self.max_buffered[L], int(buf.filled.sum()) + len(buf.skipped))
            if buf.complete:
                keep = buf.filled
                idx = buf.start + np.flatnonzero(keep)
                w.write_shard_rows(
                    buf.index,
                    buf.data if keep.all() else buf.data[keep],
                    self.labels[idx],
                    [self.images.names[i] for i in idx],
                    skipped=[self.images.names[buf.start + j] for j in sorted(buf.skipped)],
                )
                self.written[L].append(buf.index)
                self._bufs[L] = None


class WriterThread:
    """Runs ``consume`` on queued items in a background thread; its errors surface in the caller.

    The queue is bounded: a writer slower than the backbone makes the compute loop wait instead of
    piling batches up in memory.
    """

    def __init__(self, consume: Callable[[Any], None], maxsize: int = WRITER_QUEUE) -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the compute thread
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        """Queue an item (waits while the queue is full); raises the writer's error if it failed."""
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Let the writer finish what is queued (so every complete shard is written), then stop."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None:
            self._check()


# --------------------------------------------------------------------------------------------------
# The run


def _image_size(prep: Preprocess, images: ImageList) -> tuple[int, int] | None:
    """The network input size of a list: the resize rule, else the first readable image's size."""
    if prep.size is not None:
        return prep.size
    from PIL import Image

    for i in range(min(len(images), 16)):
        try:
            with Image.open(images.path(i)) as im:
                return im.size[1], im.size[0]
        except OSError:
            continue
    return None


def run_extraction(
    cfg: Config, store: CacheStore, *, progress: ProgressFn | None = None
) -> list[ExtractedEntry]:
    """Extract every view of ``cfg.dataset`` at every layer of ``cfg.backbone`` into the cache.

    Under torchrun every rank calls this with the same config; each returns the same entries.
    """
    layers = check_layers(cfg)
    bs = cfg.extract.batch_size
    if cfg.extract.shard_rows <= 0 or (bs != "auto" and int(bs) <= 0) or cfg.extract.max_batch_size <= 0:
        raise UserError("extract.shard_rows and extract.batch_size must be positive")
    if cfg.extract.launcher == "torchrun" and "RANK" not in os.environ:
        return _launch_torchrun(cfg, store)
    ranks = ranks_from_env(cfg.backbone.device)
    # Rank 0 first: it may generate the synthetic dataset, which the others must then only read.
    lists = image_lists(cfg, store) if ranks.leader else []
    ranks.barrier()
    if not ranks.leader:
        lists = image_lists(cfg, store)
    device = rank_device(cfg, ranks)
    dtype = compute_dtype(cfg, device)
    ident = backbone_identity(cfg, store)
    model: ExtractModel | None = None
    out: list[ExtractedEntry] = []
    report = progress if ranks.leader else None
    for images in lists:
        digest = image_list_digest(images.root, images.names, strict=cfg.dataset.strict_digest)
        if len(set(ranks.gather(digest))) > 1:
            raise UserError(
                f"the ranks see different files for {images.view} under {images.root}; put the dataset on a "
                "file system every rank reads, and leave it unchanged while extracting"
            )
        specs = {L: entry_spec(cfg, ident, images, L, dtype, digest) for L in layers}
        keys = {L: content_key(s) for L, s in specs.items()}
        aliases = {L: entry_alias(cfg, images.view, L, len(lists)) for L in layers}
        missing = ranks.broadcast([L for L in layers if not store.has(keys[L])])
        if ranks.leader:
            for L in layers:
                if L not in missing:
                    store.set_alias(aliases[L], keys[L])
        computed: dict[Layer, int] = {}
        if missing:
            if model is None:
                model = build_model(cfg, device, dtype)
            computed = _extract_list(
                cfg,
                store,
                model,
                images,
                {L: keys[L] for L in missing},
                {L: specs[L] for L in missing},
                aliases,
                ranks,
                report,
            )
        for L in layers:
            count = computed[L] if L in computed else store.open(keys[L]).count
            out.append(ExtractedEntry(images.view, L, keys[L], aliases[L], count, L not in computed))
    return out


def _extract_list(
    cfg: Config,
    store: CacheStore,
    model: ExtractModel,
    images: ImageList,
    keys: dict[Layer, str],
    specs: dict[Layer, dict],
    aliases: dict[Layer, str],
    ranks: Ranks,
    progress: ProgressFn | None,
) -> dict[Layer, int]:
    """Extract the layers in ``keys`` for one image list; returns {layer: rows} of the entries this
    job completed (rank 0 writes their manifests)."""
    with contextlib.ExitStack() as stack:
        if ranks.leader:
            # Sorted order: two processes locking several keys can never deadlock.
            for L in sorted(keys, key=lambda L: keys[L]):
                stack.enter_context(
                    store.lock(
                        keys[L],
                        on_wait=lambda: (
                            progress and progress(f"waiting for another extractor of {images.view}", 0, 0)
                        ),
                    )
                )
        # Another process may have finished while rank 0 waited for the lock.
        todo = ranks.broadcast([L for L in keys if not store.has(keys[L])])
        if ranks.leader:
            for L in keys:
                if L not in todo:
                    store.set_alias(aliases[L], keys[L])
        if not todo:
            return {}
        prep, _ = view_preprocess(cfg, images.view)
        size = _image_size(prep, images)

        def make_writers(cleanup: bool) -> dict[Layer, EntryWriter]:
            return {
                L: store.writer(
                    keys[L],
                    specs[L],
                    shape=model.row_shape(L, size),
                    dtype=cfg.extract.dtype,
                    shard_rows=cfg.extract.shard_rows,
                    total_rows=len(images),
                    cleanup=cleanup,
                )
                for L in todo
            }

        # Rank 0 clears what an interrupted run left (temporary files, invalid shards) before any
        # rank starts writing; the others must not touch files that are being written.
        writers = make_writers(True) if ranks.leader else {}
        ranks.barrier()
        if not ranks.leader:
            writers = make_writers(False)
        batch_size = choose_batch_size(cfg, model, size, ranks)
        n_shards = next(iter(writers.values())).n_shards
        mine = [
            i
            for i in range(ranks.rank, n_shards, ranks.world)
            if any(i not in w.done_indices for w in writers.values())
        ]
        _compute_shards(cfg, model, images, prep, writers, mine, batch_size, progress)
        ranks.barrier()  # every rank's shards are on disk
        counts: dict[Layer, int] = {}
        if ranks.leader:
            for L, w in writers.items():
                m = w.finish(
                    alias=aliases[L],
                    extra={
                        "view": images.view,
                        "root": str(images.root),
                        "layer": L,
                        "batch_size": batch_size,
                        "ranks": ranks.world,
                        **write_semi_positives(images, w.dir),
                    },
                    allow_empty=False,
                )
                counts[L] = m.count
        counts = ranks.broadcast(counts)
        ranks.barrier()  # manifests written before anyone reads them
        return counts


def _compute_shards(
    cfg: Config,
    model: ExtractModel,
    images: ImageList,
    prep: Preprocess,
    writers: dict[Layer, EntryWriter],
    shards: list[int],
    batch_size: int,
    progress: ProgressFn | None,
) -> ShardSink:
    """Run the backbone over ``shards`` of one list and write them; returns the sink (for its stats)."""
    from extract.images import ImageDataset, iter_batches

    desc = f"extract {images.view}"
    dataset = ImageDataset(
        images,
        resize=prep.size,
        mean=prep.mean,
        std=prep.std,
        skip_bad=cfg.extract.skip_bad,
        resample=prep.resample,
        normalization=prep.normalization,
    )
    sizes = None
    if prep.size is None:
        # Native sizes may differ and a batch can only stack one size: group each shard by size.
        rows = cfg.extract.shard_rows
        sizes = _input_sizes(
            dataset, [k for i in shards for k in range(i * rows, min((i + 1) * rows, len(images)))]
        )
        _check_row_shapes(model, writers, images, sizes)
    batches = plan_batches(shards, cfg.extract.shard_rows, len(images), batch_size, sizes)
    total = sum(len(b) for b in batches)
    cuda = model.device.type == "cuda"
    sink = ShardSink(writers, images)
    storage = getattr(torch, cfg.extract.dtype)
    done = 0
    if progress:
        progress(desc, done, total)
    if not batches:  # this rank's shards are all complete already
        return sink
    with WriterThread(sink.consume) as writer:
        loader = iter_batches(
            dataset,
            batch_size=batch_size,
            num_workers=cfg.extract.num_workers,
            pin_memory=cuda,
            batches=batches,
        )
        for planned, (idx, x) in zip(batches, loader):
            outputs: dict[Layer, torch.Tensor] = {}
            ready = None
            if x is not None:
                pooled = model(x)
                if cuda:
                    # Cast on the device (half the transfer), copy into pinned memory without waiting;
                    # the writer thread waits on the event before it reads.
                    for L, t in pooled.items():
                        host = torch.empty(t.shape, dtype=storage, pin_memory=True)
                        outputs[L] = host.copy_(t.to(storage), non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record()
                else:
                    outputs = pooled
            writer.put(_Batch(planned[0] // cfg.extract.shard_rows, planned, idx.numpy(), outputs, ready))
            done += len(planned)
            if progress:
                progress(desc, done, total)
    return sink


# --------------------------------------------------------------------------------------------------
# extract.launcher=torchrun


def _launch_torchrun(cfg: Config, store: CacheStore) -> list[ExtractedEntry]:
    """Run this extraction as a torchrun job of ``extract.nproc`` ranks, then report its entries.

    The job gets the resolved config (launcher off) and the same cache; when it has finished, this
    process finds every entry complete and reports them (``reused`` is False for those the job made).
    """
    import yaml

    from configs.schema import to_dict

    n = cfg.extract.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    if n < 1:
        raise UserError(f"extract.nproc={cfg.extract.nproc} must be >= 1 (0 = one rank per visible GPU)")
    job = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, launcher="none"))
    before = _missing_keys(job, store)
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchrun-", dir=store.root) as tmp:
        cfg_path = Path(tmp) / f"{cfg.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(to_dict(job), sort_keys=False))
        log = Path(tmp) / "stderr.log"
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PIPELINE_CACHE_DIR": str(store.root),
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "extract.runner",
            str(cfg_path),
        ]
        with open(log, "w") as err:
            rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err).returncode
        if rc != 0:
            text = log.read_text(errors="replace")
            lines = [ln[len("error: ") :] for ln in text.splitlines() if ln.startswith("error: ")]
            reason = lines[0] if lines else (text.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"torchrun extraction ({n} ranks) failed: {reason}")
    entries = run_extraction(job, store)
    return [dataclasses.replace(e, reused=e.key not in before) for e in entries]


def _missing_keys(cfg: Config, store: CacheStore) -> set[str]:
    """Keys of the entries ``cfg`` would have to compute (without loading the backbone)."""
    lists = image_lists(cfg, store)
    device = resolve_device(cfg.backbone.device)
    dtype = compute_dtype(cfg, device)
    ident = backbone_identity(cfg, store)
    out = set()
    for images in lists:
        digest = image_list_digest(images.root, images.names, strict=cfg.dataset.strict_digest)
        for L in check_layers(cfg):
            key = content_key(entry_spec(cfg, ident, images, L, dtype, digest))
            if not store.has(key):
                out.add(key)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m extract.runner CONFIG [k=v …]``: what each torchrun rank runs.

    Errors end as one ``error: …`` line on stderr with exit code 2, like the pipeline command.
    """
    from configs.schema import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    try:
        cfg = load_config(path, overrides)
        run_extraction(cfg, CacheStore.open_default())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()


__all__ = [
    "DinoModel",
    "ExtractModel",
    "ExtractedEntry",
    "Ranks",
    "ShardSink",
    "VGGModel",
    "WriterThread",
    "build_model",
    "choose_batch_size",
    "compute_dtype",
    "image_lists",
    "plan_batches",
    "probe_batch_size",
    "resolve_device",
    "run_extraction",
]
