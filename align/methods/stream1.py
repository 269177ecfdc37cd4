"""GeoAlign stream 1 (``geoalign``), its supervised upper bound (``supervised``) and ``fusion`` (with ISMS).

Stream 1 trains on one layer (``align.stream1_layer``, default the last); its parameters are
:class:`align.geoalign.Stream1Config` (``align.params``), with widths that follow the input; fusion's
add ISMS's under ``align.params.isms``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from cvgl.align.geoalign import Stream1Config
from cvgl.align.isms import ISMSConfig
from cvgl.align.methods._descriptors import Encoders, encode_parts, key, train_isms_part
from cvgl.align.registry import Method, register
from cvgl.core.errors import UserError


@dataclass
class FusionParams(Stream1Config):
    """``align.params`` of ``align.method=fusion``: stream 1's, and ISMS's under ``isms``."""

    isms: ISMSConfig = field(default_factory=ISMSConfig)

    def stream1(self) -> Stream1Config:
        return Stream1Config(**{f.name: getattr(self, f.name) for f in fields(Stream1Config)})

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

    s1cfg: Stream1Config = job.params.stream1() if isinstance(job.params, FusionParams) else job.params
    layer = job.inputs.layers.single
    sat, dro = job.train["sat"], job.train["dro"]
    if supervised and ((sat.labels < 0).all() or (dro.labels < 0).all()):
        raise UserError("align.method=supervised needs labels on the training entries; these have none (-1)")
    s1, _ = (train_supervised if supervised else train_stream1)(
        sat.tensors[layer],
        dro.tensors[layer],
        s1cfg,
        sat_labels=torch.from_numpy(sat.labels),
        dro_labels=torch.from_numpy(dro.labels),
        opts=job.trainer_options("stream1", s1cfg.epochs),
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
    isms = train_isms_part(job, job.params.isms)
    return {**train_stream1_part(job), **isms}


def _fusion_key(cfg, params: FusionParams, inputs):
    # The fused column order is part of the entries' keys: entries of the old [ISMS | stream 1] order differ.
    return key(cfg, params.stream1(), inputs, isms=params.isms, entry={"layout": ["stream1", "isms"]})


def _stream1(name: str, train, inputs: str = "layer", description: str = "", **extra) -> Method:
    return Method(
        name,
        inputs=inputs,
        train=train,
        encode=encode_parts,
        defaults=adapter_dims,
        description=description,
        **{"params": Stream1Config, "key": key, **extra},
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
        inputs="layer+layers",
        description="stream 1 and ISMS, fused as GeoAlign fuses them",
        params=FusionParams,
        key=_fusion_key,
    )
)
