"""VGG16's 13-conv feature stack, loading torchvision-format state dicts, with CVFT's preprocessing.

The stack is an ``nn.Sequential`` laid out exactly like torchvision's ``vgg16().features`` (conv at
indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; ReLU after each; max-pools at 4, 9, 16, 23,
30), so ``features.N.weight`` / ``features.N.bias`` load without renaming. torchvision itself is not
usable here, so the module is written out.

Two ways to pool inside the stack:

* ``cvft=True`` (default): CVFT's TensorFlow code pools with ``padding='SAME'``, i.e. a ceiling, so an
  odd side keeps its last row/column. For the CVFT inputs (no pool after conv5_3) this gives
  conv5_3 maps of **7×39** for a 112×616 ground panorama and **16×16** for a 256×256 aerial tile.
* ``cvft=False``: torchvision's floor pooling (``MaxPool2d(2, 2)``): 7×38 and 16×16.

Preprocessing. CVFT's loaders (``input_data_cvusa.py``) read images with OpenCV (BGR), resize with
``INTER_AREA`` to 112×616 (ground; CVUSA panoramas are 224×1232) and 256×256 (aerial), keep the 0–255
range and subtract the per-channel BGR means ``(103.939, 116.779, 123.6)`` (sic: 123.6, not Caffe's
123.68) — the convention of the Caffe-converted VGG16 their initial model was built from. Weights in
torchvision format expect RGB in [0, 1] normalized with the ImageNet mean/std instead: use
``normalization="imagenet"`` with them. :func:`preprocess` implements both; the resize is the input
pipeline's (``preprocess.recipe=cvft``: Pillow's BOX filter, the same area average as ``INTER_AREA``
when shrinking).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError
from cvgl.extract.weight_files import weight_files
from torch import nn

#: CVFT input sizes as (height, width).
CVFT_GROUND_SIZE: tuple[int, int] = (112, 616)
CVFT_AERIAL_SIZE: tuple[int, int] = (256, 256)

#: CVFT's normalization: BGR channel order, 0–255 range, these means subtracted, no std division.
CVFT_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.6)
#: torchvision's normalization: RGB in [0, 1], then (x - mean) / std.
IMAGENET_MEAN_RGB: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB: tuple[float, float, float] = (0.229, 0.224, 0.225)

# (name, out_channels) per conv, "M" = 2×2 max-pool; the order of torchvision's configuration "D".
_CFG_D: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]  # fmt: skip
_CONV_NAMES = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
]  # fmt: skip


def _layer_table() -> tuple[dict[str, int], dict[int, tuple[int, int]]]:
    """Map layer names to the index of their last module in ``features`` and conv index → (cin, cout)."""
    names: dict[str, int] = {}
    convs: dict[int, tuple[int, int]] = {}
    idx, cin, conv_i, pool_i = 0, 3, 0, 0
    for v in _CFG_D:
        if v == "M":
            pool_i += 1
            names[f"pool{pool_i}"] = idx
            idx += 1
        else:
            convs[idx] = (cin, int(v))
            names[_CONV_NAMES[conv_i]] = idx + 1  # the ReLU after the conv: maps are post-activation
            cin, conv_i, idx = int(v), conv_i + 1, idx + 2
    return names, convs


LAYER_END, CONV_SHAPES = _layer_table()
#: Indices N of ``features.N.weight`` in torchvision's VGG16.
CONV_INDICES: tuple[int, ...] = tuple(sorted(CONV_SHAPES))
FEATURE_DIM = 512


class VGG16Backbone(nn.Module):
    """The 13 conv layers of VGG16 (configuration D) with torchvision's module indices."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for idx in range(LAYER_END["pool5"] + 1):
            if idx in CONV_SHAPES:
                cin, cout = CONV_SHAPES[idx]
                layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            elif idx - 1 in CONV_SHAPES:
                layers.append(nn.ReLU(inplace=True))
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)

    def forward_layers(
        self, x: torch.Tensor, layers: Sequence[str], cvft: bool = True
    ) -> dict[str, torch.Tensor]:
        """Run the stack on normalized images ``[B, 3, H, W]`` once, up to the deepest of ``layers``,
        and return each requested layer's output ``{name: [B, C, h, w]}`` (post-ReLU for convs).

        ``cvft=True`` pools like CVFT's TensorFlow code (ceil, 'SAME'); ``False`` like torchvision
        (floor). At conv5_3 there have been four pools: ``[B, 512, ceil/floor(H/16), …(W/16)]``.
        """
        bad = [L for L in layers if L not in LAYER_END]
        if bad or not layers:
            which = f"unknown VGG16 layer {bad[0]!r}" if bad else "no VGG16 layer given"
            raise UserError(f"{which}; use one of {', '.join(LAYER_END)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise UserError(f"VGG16 expects images [B, 3, H, W], got {list(x.shape)}; check the loader")
        wanted = {LAYER_END[L]: L for L in layers}
        deepest = max(wanted)
        out: dict[str, torch.Tensor] = {}
        for idx, module in enumerate(self.features):
            if idx > deepest:
                break
            if isinstance(module, nn.MaxPool2d):
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=cvft)
            elif isinstance(module, nn.ReLU):
                # Never in place: the caller may hold the conv output (and autograd may need it).
                x = F.relu(x)
            else:
                x = module(x)
            if idx in wanted:
                out[wanted[idx]] = x
        return out

    def forward_maps(self, x: torch.Tensor, layer: str = "conv5_3", cvft: bool = True) -> torch.Tensor:
        """The output of one layer (conv5_3, pool4, …): :meth:`forward_layers` for ``[layer]``."""
        return self.forward_layers(x, [layer], cvft)[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`forward_maps` at conv5_3 with CVFT pooling."""
        return self.forward_maps(x)


def _init_random(model: VGG16Backbone, seed: int) -> None:
    """torchvision's VGG init (Kaiming normal, fan_out, ReLU; zero bias), reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    for idx in CONV_INDICES:
        conv = model.features[idx]
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu", generator=gen)
        nn.init.zeros_(conv.bias)


def _read_state(weights: str | Path) -> dict[str, torch.Tensor]:
    path = Path(weights)
    if not path.exists():
        raise UserError(f"VGG16 weights file {path} not found; pass an existing .pth/.pt/.safetensors file")
    weight_files(path, folder_allowed=False)  # a regular file: a FIFO or a folder is refused unread
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"cannot read safetensors file {path} ({exc}); re-export the weights") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle refusals and corrupt files both land here
        raise UserError(
            f"cannot load {path} as a state dict with weights_only=True ({type(exc).__name__}); "
            "save model.state_dict(), not the model object"
        ) from exc
    # Training scripts often wrap the state dict; unwrap the usual containers.
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    return dict(obj)


def _features_only(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Keep the ``features.N.*`` tensors, accepting full-model, features-only and ``module.`` forms."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key.removeprefix("module.")
        if k.startswith("classifier.") or k.startswith("avgpool."):
            continue  # the fully connected head is not used for descriptors
        if not k.startswith("features."):
            k = "features." + k  # a bare ``vgg.features.state_dict()`` has keys like "0.weight"
        out[k] = value
    expected = {f"features.{i}.{p}" for i in CONV_INDICES for p in ("weight", "bias")}
    unexpected = sorted(set(out) - expected)
    if unexpected:
        hint = (
            " (BatchNorm keys: vgg16_bn is not supported)" if any("running" in k for k in unexpected) else ""
        )
        raise UserError(
            f"unexpected key {unexpected[0]} in VGG16 weights {source}{hint}; pass plain vgg16 weights"
        )
    missing = sorted(expected - set(out), key=lambda k: (int(k.split(".")[1]), k))
    if missing:
        raise UserError(
            f"missing key {missing[0]} in VGG16 weights {source}; pass a complete vgg16 state dict"
        )
    for key in sorted(expected):
        idx, part = int(key.split(".")[1]), key.split(".")[2]
        cin, cout = CONV_SHAPES[idx]
        want = (cout, cin, 3, 3) if part == "weight" else (cout,)
        if tuple(out[key].shape) != want:
            raise UserError(
                f"VGG16 weight {key} has shape {list(out[key].shape)}, expected {list(want)} "
                f"in {source}; pass torchvision vgg16 weights"
            )
    return out


def load_vgg16(
    weights: str | Path | Mapping[str, torch.Tensor] | None = None, seed: int = 0
) -> VGG16Backbone:
    """Build VGG16's conv stack in eval mode.

    ``weights``: a torchvision-format state dict (full model — ``classifier.*`` ignored — or features
    only), or a path to one saved with ``torch.save`` (.pth/.pt, loaded with ``weights_only=True``) or
    as safetensors. ``None`` gives a random init that depends only on ``seed``.
    """
    model = VGG16Backbone()
    if weights is None:
        _init_random(model, seed)
    else:
        source = "(in-memory state dict)" if isinstance(weights, Mapping) else str(weights)
        state = dict(weights) if isinstance(weights, Mapping) else _read_state(weights)
        feats = _features_only(state, source)
        model.load_state_dict({k: v.to(torch.float32) for k, v in feats.items()}, strict=True)
    return model.eval().requires_grad_(False)


def preprocess(
    images: np.ndarray | torch.Tensor, normalization: Literal["cvft", "imagenet"] = "cvft"
) -> torch.Tensor:
    """RGB uint8 images ``[B, H, W, 3]`` (or one ``[H, W, 3]``) → float network input ``[B, 3, H, W]``.

    ``"cvft"``: BGR order, 0–255, minus :data:`CVFT_MEAN_BGR` (CVFT's code; Caffe-style weights).
    ``"imagenet"``: RGB, /255, ImageNet mean/std (torchvision-format weights).
    """
    # np.array copies: PIL-backed arrays are read-only, which torch warns about.
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, dtype=np.float32))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise UserError(f"expected RGB images [B, H, W, 3], got {list(x.shape)}; convert to RGB first")
    x = x.to(torch.float32).permute(0, 3, 1, 2)
    if normalization == "cvft":
        x = x.flip(1) - torch.tensor(CVFT_MEAN_BGR).view(1, 3, 1, 1)
    elif normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
        x = (x / 255.0 - mean) / std
    else:
        raise UserError(f"unknown normalization {normalization!r}; use 'cvft' or 'imagenet'")
    return x.contiguous()
