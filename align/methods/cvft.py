"""CVFT on VGG16 conv maps: ``cvft`` (feature transport), ``vgg_conv`` (the same heads without
transport) and ``vgg_gp`` (global max pooling, nothing to train); :class:`align.train_cvft.CVFTConfig`.

Inputs are conv-map entries ([C, h, w] per row) of one ground and one aerial view whose row i is
pair i. Training reads random batches from the cache shards (a CVUSA-size entry is tens of GB and
never loaded whole); encoding streams the entries shard by shard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from cvgl.align.inputs import EntryRows, MapView
from cvgl.align.registry import Method, MethodKey, register
from cvgl.align.train_cvft import CVFTConfig, encode_aerial, encode_ground, train_cvft


def train(job) -> torch.nn.Module:
    """Train the head on the training pairs; checkpoint ``<method>``."""
    ccfg: CVFTConfig = job.params
    method = job.cfg.align.method
    ground, aerial = job.train["ground"].entry, job.train["aerial"].entry
    state = job.state(method, with_history=False)

    def on_epoch(record: dict) -> None:
        job.history.append({k: v for k, v in record.items() if isinstance(v, (int, float, str))})
        if job.log:
            shown = {k: record[k] for k in ("loss", "pairs_per_s") if k in record}
            job.log(f"align {method}", int(record.get("epoch", 0)), ccfg.epochs, shown)  # counts done epochs

    model, _ = train_cvft(
        EntryRows(ground),
        EntryRows(aerial),
        ground.count,
        ccfg,
        seed=job.seed,
        device=job.device,
        on_epoch=on_epoch,
        state=state.load(),
        save_state=lambda s: state.save(0, s),
    )
    conf = {
        "method": method,
        "cvft": asdict(ccfg),
        "model": getattr(model, "config", {}),
        "run_digest": job.run_digest,
    }
    job.save(method, model, conf)
    return model


def encode(model: torch.nn.Module, view: MapView, role: str) -> np.ndarray:
    """The view's descriptors, its entry streamed shard by shard through its side of the model."""
    blocks = (d for d, _, _ in view.entry.iter_chunks())
    return (encode_ground if role == "ground" else encode_aerial)(model, blocks).numpy()


def _params(name: str) -> type:
    """CVFTConfig whose variant is ``name``: the method fixes it (another value is refused at load)."""
    variant = dataclasses.field(default=name, metadata={"choices": (name,)})
    return dataclasses.make_dataclass("CVFTConfig", [("variant", str, variant)], bases=(CVFTConfig,))


def _defaults(sizes: dict, given: dict) -> dict:
    return {"shard_rows": sizes["shard_rows"]}


def _key(cfg: Any, params: CVFTConfig, inputs: Any) -> MethodKey:
    # Every parameter; CVFT trains in float32 whatever align.dtype says, so no dtype.
    return MethodKey({"params": asdict(params)})


def _register() -> None:
    for name, what in (
        ("cvft", "CVFT: optimal-transport layer from ground to aerial layout, supervised by pairs"),
        ("vgg_conv", "CVFT's heads without the transport (baseline)"),
        ("vgg_gp", "global max pooling of VGG16 conv maps (baseline; nothing to train)"),
    ):
        register(
            Method(
                name,
                inputs="conv_maps",
                train=train,
                encode=encode,
                params=_params(name),
                defaults=_defaults,
                key=_key,
                description=what,
            )
        )


_register()
