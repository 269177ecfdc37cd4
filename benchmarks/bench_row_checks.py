"""Benchmark: the retrieval stage's per-row checks (norms, duplicate hashes) against the exact pass.

``retrieve`` checks every stored gallery row as it streams (``retrieve/row_checks.py``): its L2 norm
(the cosine warning) and a 64-bit hash (the duplicate-rows warning). This times both on random float32
rows and compares them with ``retrieve.metrics.evaluate`` over the same gallery, so the overhead is a
share of the pass it rides on.

Run: ``python benchmarks/bench_row_checks.py [--gallery N] [--queries Q] [--dim D]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from cvgl.retrieve.metrics import evaluate
from cvgl.retrieve.row_checks import RowHashes, RowNorms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gallery", type=int, default=51_355)
    ap.add_argument("--queries", type=int, default=701)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--chunk", type=int, default=8192)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    g = rng.standard_normal((a.gallery, a.dim), dtype=np.float32)
    q = rng.standard_normal((a.queries, a.dim), dtype=np.float32)
    g[1] = g[0]
    gl = rng.integers(0, 700, a.gallery)
    ql = rng.integers(0, 700, a.queries)

    t0 = time.perf_counter()
    norms = RowNorms()
    for s in range(0, a.gallery, a.chunk):
        norms.add(g[s : s + a.chunk])
    t_norms = time.perf_counter() - t0
    t0 = time.perf_counter()
    hashes = RowHashes()
    for s in range(0, a.gallery, a.chunk):
        hashes.add(g[s : s + a.chunk])
    dup = hashes.duplicates()
    t_hashes = time.perf_counter() - t0
    t_checks = t_norms + t_hashes

    t0 = time.perf_counter()
    evaluate(q, ql, g, gl, "u1652")
    t_eval = time.perf_counter() - t0
    print(f"gallery {a.gallery} x {a.dim}, {a.queries} queries, threads {os.cpu_count()}")
    print(
        f"row checks: {t_checks:.3f} s (norms {t_norms:.3f} s, hashes {t_hashes:.3f} s), duplicates found {dup}"
    )
    print(f"exact pass: {t_eval:.3f} s; checks = {100 * t_checks / t_eval:.1f} % of it")


if __name__ == "__main__":
    main()
