"""The alignment stage's entry point: ``run_alignment`` (the orchestration lives in :mod:`align.stage`).

Methods (``align.method``) are registered in :mod:`align.registry`, one module each in
``align/methods/``: ``isms`` (stream 2), ``geoalign`` (stream 1: MoE adapter, Sinkhorn curriculum
pseudo-labels, mutual optimization), ``fusion`` (both, fused as GeoAlign does), ``emcvgl`` (hard mutual
pseudo-labels + InfoNCE), ``supervised`` (stream 1 trained with the true pairs: the upper bound),
``cvft``, ``vgg_conv``, ``vgg_gp`` (VGG16 conv maps), ``identity`` (raw descriptors; nothing to train).

Aligned entries are cache entries too. Their key chains to the parent entries' keys and the
alignment run's digest (method, its parameters, the seed, the training entries), so rerunning the
same alignment reuses them and a change of any input makes new ones. Training state is saved every
epoch under ``<cache>/models/<run digest>/`` (a state of 32 MB or more, such as release-size
stream 1's ~400 MB, at most once a minute, and after the last epoch); a killed run resumes from the
last saved epoch. The trained checkpoints and ``history.jsonl`` are kept there too (listed in
``model-files.json``, written last) and linked into the run folder, also by a rerun that reuses the
aligned entries.
"""

from __future__ import annotations

from cvgl.align.stage import AlignedEntry, LogFn, publish_model, run_alignment

__all__ = ["AlignedEntry", "LogFn", "publish_model", "run_alignment"]
