"""``isms``: GeoAlign's stream 2, linear whitening of the concatenated layers (``align.isms.*``)."""

from __future__ import annotations

import torch

from align.isms import isms_config_dict, isms_input, train_isms
from align.methods._descriptors import Encoders, encode_parts, key_params
from align.registry import Method, register


def train_isms_part(job) -> Encoders:
    """Train ISMS on both training views stacked; checkpoint ``isms``; its encoder."""
    from align.train_stream1 import STATE_SAVE_INTERVAL_S

    layers = job.inputs.layers.isms
    icfg = job.cfg.align.isms
    x = torch.cat([isms_input([job.train[r].tensors[L] for L in layers]) for r in ("sat", "dro")])
    state = job.state("isms")
    isms = train_isms(
        x,
        icfg,
        seed=job.seed,
        device=str(job.device),
        on_epoch=job.on_epoch("isms", icfg.epochs),
        state=state.load(),
        save_state=state.save,
        save_interval_s=STATE_SAVE_INTERVAL_S,
        dtype=job.dtype,
    )
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
