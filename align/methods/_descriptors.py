"""Shared by the methods on pooled descriptors (isms, geoalign, fusion, emcvgl, supervised)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.align.inputs import BRANCH, Layers, ViewData
from cvgl.configs.schema import Config

#: A trained descriptor model: part name → ``(view, branch) -> descriptors``, in the fused column order.
Encoders = dict[str, Callable[[ViewData, str], torch.Tensor]]


def key_params(cfg: Config, resolved: Any, layers: Layers) -> dict:
    """The run digest's parameters of every descriptor method (this layout is part of existing keys).

    The trainer's full configuration (``align.params`` on top of the defaults) goes in, so that a
    change of a default trains afresh instead of reusing entries trained under the old one.
    """
    return {
        "isms": asdict(cfg.align.isms),
        "stream1_layer": layers.stream1,
        **({"params": cfg.align.params} if resolved is None else {"resolved": asdict(resolved)}),
    }


def encode_parts(model: Encoders, view: ViewData, role: str) -> np.ndarray:
    """Each part's descriptors L2-normalized; several parts concatenated and normalized again
    (GeoAlign's fused layout [stream 1 | ISMS]: 3840 = 2560 + 1280 at release sizes)."""
    parts = [F.normalize(enc(view, BRANCH[role]).float(), dim=-1) for enc in model.values()]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1).numpy() if len(parts) > 1 else parts[0].numpy()
