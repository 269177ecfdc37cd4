"""GeoAlign stream 1 (``geoalign``), its supervised upper bound (``supervised``) and ``fusion`` (with ISMS).

Stream 1 trains on one layer (``align.stream1_layer``, default the last); its parameters are
:class:`align.geoalign.Stream1Config` (``align.params``), with widths that follow the input.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from cvgl.align.geoalign import Stream1Config
from cvgl.align.methods._descriptors import Encoders, encode_parts, key_params
from cvgl.align.methods.isms import train_isms_part
from cvgl.align.registry import Method, register
from cvgl.core.errors import UserError


def adapter_dims(sizes: dict, params: dict, chunks_default: int = 20, nhead: int = 4) -> dict:
    """Stream-1 widths for an input of ``in_dim``: the release's where they fit, else scaled."""
    in_dim = sizes["in_dim"]
    if in_dim == 1280:
        return {"out_dim": in_dim}
    vec = int(params.get("vec_dim", 2 * in_dim))
    head = int(params.get("nhead", nhead))
    chunks = int(params.get("num_chunks", 0)) or next(
        (c for c in range(min(chunks_default, vec), 0, -1) if vec % c == 0 and (vec // c) % head == 0), 1
    )
    return {"out_dim": in_dim, "vec_dim": vec, "num_chunks": chunks}


def train_stream1_part(job, *, supervised: bool = False) -> Encoders:
    """Train stream 1 (pseudo-labels, or the true pairs when ``supervised``); checkpoint ``stream1``
    and GeoAlign's ``stream1_geoalign.t``; its encoder."""
    from cvgl.align.baselines import train_supervised
    from cvgl.align.geoalign_release import export_stream1
    from cvgl.align.train_stream1 import train_stream1

    s1cfg: Stream1Config = job.params
    layer = job.inputs.layers.stream1
    sat, dro = job.train["sat"], job.train["dro"]
    if supervised and ((sat.labels < 0).all() or (dro.labels < 0).all()):
        raise UserError("align.method=supervised needs labels on the training entries; these have none (-1)")
    s1, _ = (train_supervised if supervised else train_stream1)(
        sat.tensors[layer],
        dro.tensors[layer],
        s1cfg,
        sat_labels=torch.from_numpy(sat.labels),
        dro_labels=torch.from_numpy(dro.labels),
        **job.trainer_kwargs("stream1", s1cfg.epochs),
    )
    conf = {
        "method": job.cfg.align.method,
        "stream1": asdict(s1cfg),
        "layer": layer,
        "run_digest": job.run_digest,
    }
    job.save("stream1", s1, conf)
    export_stream1(s1, s1cfg, job.add_file("stream1_geoalign.t"))
    device = job.device
    return {"stream1": lambda vd, r: s1.describe(vd.tensors[layer].to(device), r).cpu()}


def train_fusion(job) -> Encoders:
    """ISMS, then stream 1; the fused descriptor is [stream 1 | ISMS]."""
    isms = train_isms_part(job)
    return {**train_stream1_part(job), **isms}


def _stream1(name: str, train, layers: str = "stream1", description: str = "", **extra) -> Method:
    return Method(
        name,
        inputs="descriptors",
        layers=layers,
        train=train,
        encode=encode_parts,
        params=Stream1Config,
        defaults=adapter_dims,
        key_params=key_params,
        description=description,
        **extra,
    )


register(
    _stream1(
        "geoalign", train_stream1_part, description="GeoAlign stream 1: MoE adapter, Sinkhorn curriculum"
    )
)
register(
    _stream1(
        "supervised",
        lambda job: train_stream1_part(job, supervised=True),
        description="stream 1 trained on the true pairs (needs labels): the upper bound",
    )
)
register(
    _stream1(
        "fusion",
        train_fusion,
        layers="both",
        description="stream 1 and ISMS, fused as GeoAlign fuses them",
        # The fused column order is part of the key: entries of the old [ISMS | stream 1] order differ.
        spec_extra={"layout": ["stream1", "isms"]},
    )
)
