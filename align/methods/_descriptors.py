"""What the methods on pooled descriptors share (isms, geoalign, fusion, emcvgl, supervised): their
keys, ISMS's part of a model, and the encoder that fuses a model's parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.align.inputs import BRANCH, Inputs, ViewData
from cvgl.align.isms import ISMSConfig, isms_config_dict, isms_input, train_isms
from cvgl.align.registry import MethodKey, dtype_part
from cvgl.configs.schema import Config

#: A trained descriptor model: part name → ``(view, branch) -> descriptors``, in the fused column order.
Encoders = dict[str, Callable[[ViewData, str], torch.Tensor]]


def isms_key(cfg: Config, isms: ISMSConfig) -> dict:
    """ISMS's part of a run digest: its layers (``align.layers``; empty = all) and hyperparameters."""
    return {"layers": list(cfg.align.layers), **asdict(isms)}


def key(cfg: Config, params: Any, inputs: Inputs, *, isms: ISMSConfig | None = None, entry: dict | None = None) -> MethodKey:
    """The run digest's parameters of a descriptor method: ISMS's settings when it trains ISMS, the
    one layer it reads, and its other resolved parameters; the compute dtype when not float32."""
    run = {
        **({"isms": isms_key(cfg, isms)} if isms is not None else {}),
        "stream1_layer": inputs.layers.single,
        **({"resolved": asdict(params)} if params is not None else {"params": {}}),
    }
    return MethodKey({"params": run, **dtype_part(cfg)}, entry or {})


def train_isms_part(job, icfg: ISMSConfig) -> Encoders:
    """Train ISMS on both training views stacked; checkpoint ``isms``; its encoder."""
    layers = job.inputs.layers.stack
    x = torch.cat([isms_input([job.train[r].tensors[L] for L in layers]) for r in ("sat", "dro")])
    isms = train_isms(x, icfg, opts=job.trainer_options("isms", icfg.epochs))
    job.save("isms", isms, {**isms_config_dict(isms, icfg), "layers": layers, "run_digest": job.run_digest})
    device = job.device
    return {"isms": lambda vd, r: isms.encode(isms_input([vd.tensors[L] for L in layers]).to(device)).cpu()}


def encode_parts(model: Encoders, view: ViewData, role: str) -> np.ndarray:
    """Each part's descriptors L2-normalized; several parts concatenated and normalized again
    (GeoAlign's fused layout [stream 1 | ISMS]: 3840 = 2560 + 1280 at release sizes)."""
    parts = [F.normalize(enc(view, BRANCH[role]).float(), dim=-1) for enc in model.values()]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1).numpy() if len(parts) > 1 else parts[0].numpy()
