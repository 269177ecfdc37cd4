"""The demo's second table: the alignment methods on synthetic descriptors whose answer is known.

``pipeline demo`` runs the methods on a random backbone's descriptors of synthetic images. Those
descriptors carry no learnable drone-to-satellite relation (see the README's demo section), so the
demo also runs the same stage on a small world of :mod:`align.synthetic` (the alignment benchmark's
generator, ``benchmarks/bench_align_synthetic.py``): drones are a rotated, warped, shifted, noisy
copy of their location's satellite content, so a drone-side adapter has something real to undo,
and train and test locations differ, as in GeoAlign's protocol.

Every method goes through the real stage (:func:`align.stage.run_alignment`) and retrieval
(:func:`retrieve.runner.run_retrieval`, u1652 protocol) with a run folder of its own; the entries
are keyed by the generator's spec and the alignment run, so a second demo trains nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvgl.align.synthetic import WorldConfig, align_overrides, make_splits, write_cache
from cvgl.cache.store import CacheStore

NAME = "demo_world"
# The benchmark's --tiny world (tests/e2e/test_align_benchmark.py): 60 locations × 8 drone views and 30
# distractor tiles, trained on 60 other locations. A smaller one (40 × 6) was tried: stream 1 then
# stays at raw's level (45.0 vs 46.3 R@1), too little data for its adapter.
SIZE = dict(n_locations=60, views_per_location=8, n_distractors=30)
DIM = 64
# The benchmark's choice on its validation split (SELECTED in bench_align_synthetic.py: lr 2e-3,
# two drones per satellite) with a shorter schedule (100 epochs, the release 300; 150 gives stream 1
# R@1 46.3 instead of 43.5, for half as much training again).
PARAMS = {"lr": 2e-3, "dro_num": 2, "epochs": 100}
# Fusion is left out here (it retrains stream 1 and adds ISMS, both shown): the demo's time bound.
WORLD_METHODS = ("identity", "isms", "geoalign", "emcvgl")


@dataclass
class WorldRow:
    """One method's result on the descriptor world."""

    method: str
    metrics: dict
    train_s: float
    reused: bool  # the aligned entries came from the cache (nothing trained)


def run_descriptor_world(
    store: CacheStore,
    out: Path,
    methods: Sequence[str],
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[WorldRow]:
    """Write the world's entries (reused when present), then align and evaluate each method.

    ``identity`` is the raw descriptors of the last layer. Each method's run folder is
    ``out/<method>/`` (config.yaml, run.json, metrics.json, per_query.csv).
    """
    import torch

    _, test, train = make_splits(WorldConfig(dim=DIM, seed=seed), seed=seed + 1, **SIZE)
    write_cache(store, NAME, test, train)
    # Matrices this small gain nothing from a second thread, and on a busy machine the threads'
    # synchronisation costs more than the work (a 3-5x slower stream 1 was measured with 2 threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_methods(store, out, methods, test.layers, seed, log)
    finally:
        torch.set_num_threads(threads)


def _run_methods(
    store: CacheStore, out: Path, methods: Sequence[str], layers, seed: int, log
) -> list[WorldRow]:
    from cvgl.align.stage import run_alignment
    from cvgl.configs.schema import load_config
    from cvgl.orchestration.chain import in_run_folder
    from cvgl.retrieve.runner import run_retrieval

    rows = []
    for method in methods:
        overrides = align_overrides(NAME, layers) + [
            f"method={method}",
            f"seed={seed}",
            f"out={out / method}",
            "align.params=" + json.dumps({**PARAMS, "isms": {"out_dim": DIM}}),
            "retrieve.report=false",  # the world has no images to show
            "retrieve.device=cpu",
        ]

        def work(cfg, store, run):
            t0 = time.perf_counter()
            aligned = run_alignment(cfg, store, run)
            train_s = time.perf_counter() - t0
            m = run_retrieval(cfg, store, run)
            run.record(timings={"align_s": train_s}, align_reused=bool(aligned) and all(a.reused for a in aligned))
            return aligned, train_s, m

        (aligned, train_s, m), _ = in_run_folder("run", load_config(None, overrides), store.root, work)
        reused = all(a.reused for a in aligned)
        rows.append(WorldRow(method, m, train_s, reused))
        if log and aligned:
            log(f"descriptor world: {method} {'reused' if reused else f'trained in {train_s:.1f} s'}")
    return rows
