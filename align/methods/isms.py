"""``isms``: GeoAlign's stream 2, linear whitening of the concatenated layers (``align.params.isms``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cvgl.align.isms import ISMSConfig
from cvgl.align.methods._descriptors import Encoders, encode_parts, key, train_isms_part
from cvgl.align.registry import Method, register


@dataclass
class ISMSParams:
    """``align.params`` of ``align.method=isms``: ISMS's hyperparameters, under ``isms`` as in fusion."""

    isms: ISMSConfig = field(default_factory=ISMSConfig)


def train(job) -> Encoders:
    return train_isms_part(job, job.params.isms)


register(
    Method(
        "isms",
        inputs="layers",
        train=train,
        encode=encode_parts,
        params=ISMSParams,
        # The run digest lists ISMS's settings, and no parameter besides them.
        key=lambda cfg, p, inputs: key(cfg, None, inputs, isms=p.isms),
        description="ISMS whitening (GeoAlign stream 2); unsupervised; parameters in align.params.isms",
    )
)
