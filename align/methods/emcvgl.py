"""``emcvgl``: EM-CVGL-style hard mutual pseudo-labels with InfoNCE (:class:`align.baselines.EMCVGLConfig`)."""

from __future__ import annotations

from dataclasses import asdict

import torch
from cvgl.align.baselines import EMCVGLConfig, train_emcvgl
from cvgl.align.methods._descriptors import Encoders, encode_parts, key
from cvgl.align.registry import Method, register


def emcvgl_dims(sizes: dict, params: dict) -> dict:
    """The adapter's widths for an input of ``in_dim`` (the release's 2048 code at 1280)."""
    in_dim = sizes["in_dim"]
    return {"out_dim": in_dim, "vec_dim": max(2 * in_dim, 8) if in_dim != 1280 else 2048}


def train(job) -> Encoders:
    """Train the EM-CVGL adapter on the stream-1 layer; checkpoint ``emcvgl``; its encoder."""

    ecfg: EMCVGLConfig = job.params
    layer = job.inputs.layers.single
    sat, dro = job.train["sat"], job.train["dro"]
    em, _ = train_emcvgl(
        sat.tensors[layer],
        dro.tensors[layer],
        ecfg,
        sat_labels=torch.from_numpy(sat.labels),
        dro_labels=torch.from_numpy(dro.labels),
        opts=job.trainer_options("emcvgl", ecfg.epochs),
    )
    job.save("emcvgl", em, {"method": "emcvgl", "emcvgl": asdict(ecfg), "layer": layer})
    device = job.device
    return {"emcvgl": lambda vd, r: em.describe(vd.tensors[layer].to(device), r).cpu()}


register(
    Method(
        "emcvgl",
        inputs="layer",
        train=train,
        encode=encode_parts,
        params=EMCVGLConfig,
        defaults=emcvgl_dims,
        key=key,
        description="EM-CVGL baseline: hard mutual pseudo-labels + InfoNCE",
    )
)
