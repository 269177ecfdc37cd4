"""``isms``: GeoAlign's stream 2, linear whitening of the concatenated layers (``align.isms.*``)."""

from __future__ import annotations

import torch
from cvgl.align.isms import isms_config_dict, isms_input, train_isms
from cvgl.align.methods._descriptors import Encoders, encode_parts, key_params
from cvgl.align.registry import Method, register


def train_isms_part(job) -> Encoders:
    """Train ISMS on both training views stacked; checkpoint ``isms``; its encoder."""

    layers = job.inputs.layers.isms
    icfg = job.cfg.align.isms
    x = torch.cat([isms_input([job.train[r].tensors[L] for L in layers]) for r in ("sat", "dro")])
    isms = train_isms(x, icfg, **job.trainer_kwargs("isms", icfg.epochs))
    job.save("isms", isms, {**isms_config_dict(isms, icfg), "layers": layers, "run_digest": job.run_digest})
    device = job.device
    return {"isms": lambda vd, r: isms.encode(isms_input([vd.tensors[L] for L in layers]).to(device)).cpu()}


register(
    Method(
        "isms",
        inputs="descriptors",
        layers="isms",
        train=train_isms_part,
        encode=encode_parts,
        key_params=key_params,
        description="ISMS whitening (GeoAlign stream 2); unsupervised; parameters in align.isms",
    )
)
