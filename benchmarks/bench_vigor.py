"""Benchmark: protocol ``vigor`` at VIGOR scale, streamed, against the bare score matmul.

VIGOR's same-area test split has ~90,000 satellite tiles and ~50,000 ground queries. Sample4Geo's
``evaluate/vigor.py`` builds the whole query x reference score matrix (here 5e4 x 1e5 float32 = 20 GB),
which runs out of memory on 32 GB machines. ``retrieve.metrics.evaluate_streaming`` never holds it: the
gallery comes in shard-sized chunks and queries in ~256 MB score blocks.

Measured in one process, on random L2-normalised float32 descriptors (d = 1,024), each query with one
positive and three semi-positives:

* bare matmul: every (query block x gallery chunk) product with the same block and chunk sizes the
  evaluation uses, results discarded: the floor any exact evaluation pays;
* ``evaluate_streaming(..., "vigor")``: R@1/5/10, R@1%, hit rate and the top-10 lists, end to end;
* peak resident memory (``resource.getrusage``), against the inputs and the full score matrix.

Run: ``python benchmarks/bench_vigor.py`` (full scale: 100,000 x 50,000) or e.g.
``--n-query 10000`` when the machine is shared; ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvgl.retrieve.metrics import _queries_per_block, evaluate_streaming, iter_array_chunks  # noqa: E402


def _peak_mb() -> float:
    """Peak resident set of this process so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_data(n_gallery: int, n_query: int, dim: int, seed: int):
    """Random unit descriptors; labels 0..G-1; each query one positive and three other semi-positives."""
    rng = np.random.default_rng(seed)
    g = np.empty((n_gallery, dim), np.float32)
    for s in range(0, n_gallery, 8192):  # in pieces: no float64 temporary of the whole gallery
        x = rng.standard_normal((min(8192, n_gallery - s), dim), dtype=np.float32)
        g[s : s + x.shape[0]] = x / np.linalg.norm(x, axis=1, keepdims=True)
    pos = rng.integers(0, n_gallery, n_query)
    # Queries near their positive, so the ranks spread over the whole range rather than all failing.
    q = np.empty((n_query, dim), np.float32)
    for s in range(0, n_query, 8192):
        e = min(n_query, s + 8192)
        x = g[pos[s:e]] + 8.0 * rng.standard_normal((e - s, dim), dtype=np.float32) / np.sqrt(dim)
        q[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    semi = (pos[:, None] + rng.integers(1, n_gallery, (n_query, 3))) % n_gallery
    return q, pos.astype(np.int64), g, np.arange(n_gallery, dtype=np.int64), semi.astype(np.int64)


def bare_matmul(q: np.ndarray, g: np.ndarray, chunk_rows: int) -> float:
    """Seconds for every query-block x gallery-chunk product at the evaluation's block sizes."""
    qt = torch.from_numpy(q)
    b = _queries_per_block(min(chunk_rows, g.shape[0]))
    buf = None
    t0 = time.perf_counter()
    for s in range(0, g.shape[0], chunk_rows):
        gt = torch.from_numpy(g[s : s + chunk_rows])
        for r in range(0, q.shape[0], b):
            qb = qt[r : r + b]
            if buf is None or buf.numel() < qb.shape[0] * gt.shape[0]:
                buf = torch.empty(qb.shape[0] * gt.shape[0], dtype=torch.float32)
            torch.mm(qb, gt.T, out=buf[: qb.shape[0] * gt.shape[0]].view(qb.shape[0], gt.shape[0]))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-gallery", type=int, default=100_000)
    ap.add_argument("--n-query", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--chunk-rows", type=int, default=8192, help="gallery rows per chunk (a cache shard)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 5,000 x 2,000, d 256")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.n_gallery, args.n_query, args.dim = 5000, 2000, 256

    q, ql, g, gl, semi = make_data(args.n_gallery, args.n_query, args.dim, args.seed)
    inputs_mb = (q.nbytes + g.nbytes) / 2**20
    after_data_mb = _peak_mb()
    t_mm = bare_matmul(q, g, args.chunk_rows)
    t0 = time.perf_counter()
    summary, _ = evaluate_streaming(
        q, ql, iter_array_chunks(g, gl, args.chunk_rows), "vigor", topk=10, semi_positives=semi
    )
    t_eval = time.perf_counter() - t0
    peak_mb = _peak_mb()
    full_mb = args.n_query * args.n_gallery * 4 / 2**20
    out = {
        "n_gallery": args.n_gallery,
        "n_query": args.n_query,
        "dim": args.dim,
        "chunk_rows": args.chunk_rows,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "bare_matmul_s": round(t_mm, 2),
        "evaluate_s": round(t_eval, 2),
        "ratio_vs_matmul": round(t_eval / t_mm, 3),
        "inputs_mb": round(inputs_mb, 1),
        "peak_rss_after_data_mb": round(after_data_mb, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_over_inputs_mb": round(peak_mb - after_data_mb, 1),
        "full_score_matrix_mb": round(full_mb, 1),
        "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    # The point of the exercise: the evaluation's working set is a bounded block, not the matrix.
    assert peak_mb - after_data_mb < 2048, "the evaluation held more than its score blocks"


if __name__ == "__main__":
    main()
