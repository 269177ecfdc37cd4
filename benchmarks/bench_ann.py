"""Benchmark: approximate indexes (IVF-PQ, HNSW) on a synthetic 1,000,000-tile gallery.

Data: d = 128 (``--dim``), clustered like real descriptors rather than uniform noise: 1,000 cluster
centres on the unit sphere, each cluster a random 16-dimensional local subspace around its centre (spread of
norm 0.5) plus isotropic noise of norm 0.1, every row L2-normalised. Queries (10,000) are fresh draws from the same mixture,
not gallery rows. Ground truth: the exact inner-product top-10 of every query (blocked torch matmul).

For each index (built with ``retrieve.indexes.build_index`` from the gallery streamed in 100,000-row
chunks, IVF trained on a sample drawn across them): build time, index size in memory (serialized bytes)
and, for several search settings, queries/s over all queries in one call and recall@10 against exact
search: ``recall@10`` = share of the exact top-10 found (the strict, K-recall@K definition) and
``nn@10`` = share of queries whose exact nearest neighbour is in the top-10.

Run: ``python benchmarks/bench_ann.py`` (a few minutes to tens of minutes on 2 cores, depending on load),
``--quick`` for 100,000 rows.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvgl.retrieve.indexes import IndexParams, ServedIndex, build_index, recall_vs_exact, search  # noqa: E402

CHUNK = 100_000


def make_data(n: int, n_q: int, dim: int, seed: int, n_clusters: int = 1000, local_dim: int = 16):
    """Gallery and queries from one clustered mixture (float32, unit rows)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    # Local displacement of expected norm `spread` inside each cluster's subspace, isotropic noise of norm 0.1.
    spread = 0.5
    bases = rng.standard_normal((n_clusters, dim, local_dim)).astype(np.float32) * (
        spread / np.sqrt(dim * local_dim)
    )

    def draw(m: int) -> np.ndarray:
        k = rng.integers(0, n_clusters, m)
        z = rng.standard_normal((m, local_dim)).astype(np.float32)
        x = centers[k] + (0.1 / np.sqrt(dim)) * rng.standard_normal((m, dim)).astype(np.float32)
        order = np.argsort(k, kind="stable")
        bounds = np.searchsorted(k[order], np.arange(n_clusters + 1))
        for c in range(n_clusters):  # one matmul per cluster: its local subspace
            rows = order[bounds[c] : bounds[c + 1]]
            x[rows] += z[rows] @ bases[c].T
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return draw(n), draw(n_q)


def exact_topk(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    gt = torch.from_numpy(g)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    step = max(1, (512 << 20) // (4 * g.shape[0]))
    with torch.inference_mode():
        for s in range(0, q.shape[0], step):
            out[s : s + step] = torch.topk(torch.from_numpy(q[s : s + step]) @ gt.T, k, dim=1).indices.numpy()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="100,000 gallery rows, 2,000 queries")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--train-size", type=int, default=131_072)
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads (0: default)")
    p.add_argument("--only", choices=["hnsw", "ivf_pq"], default=None)
    args = p.parse_args()
    if args.quick:
        args.n, args.queries, args.nlist, args.train_size = 100_000, 2_000, 1024, 65_536
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    k = 10
    print(
        f"python {platform.python_version()}, faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}"
    )
    t0 = time.perf_counter()
    g, q = make_data(args.n, args.queries, args.dim, args.seed)
    print(
        f"data: {args.n:,} x {args.dim} gallery ({g.nbytes / 1e9:.2f} GB), {args.queries:,} queries, "
        f"generated in {time.perf_counter() - t0:.1f} s"
    )
    t0 = time.perf_counter()
    truth = exact_topk(q, g, k)
    t_exact = time.perf_counter() - t0
    print(f"exact top-{k} (torch blocked matmul): {t_exact:.1f} s = {args.queries / t_exact:,.0f} queries/s")

    def chunks():
        return (g[s : s + CHUNK] for s in range(0, args.n, CHUNK))

    configs = {
        "hnsw": (
            IndexParams(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction),
            [("ef_search", v) for v in (16, 32, 64, 128)],
        ),
        "ivf_pq": (
            IndexParams(
                kind="ivf_pq", nlist=args.nlist, pq_m=args.pq_m, train_size=args.train_size, refine=1
            ),
            [("nprobe", v) for v in (8, 16, 32)]
            + [("nprobe+refine", (v, r)) for v in (16, 32) for r in (4, 10)],
        ),
    }
    rows = []
    for name, (params, sweep) in configs.items():
        if args.only and name != args.only:
            continue
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        index, info = build_index(chunks, args.n, args.dim, params)
        t_build = time.perf_counter() - t0
        size = faiss.serialize_index(index).nbytes
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            f"\n{name}: build {t_build:.1f} s (training {info.get('train_s', 0):.1f} s on {info.get('train_rows', 0):,} rows), "
            f"index {size / 1e6:,.0f} MB, peak RSS +{(rss1 - rss0) / 1e3:,.0f} MB, build params {params.resolved(args.n, args.dim).build_spec()}"
        )
        base = params.resolved(args.n, args.dim)
        for what, v in sweep:
            if what == "ef_search":
                served = ServedIndex(index, replace(base, ef_search=v))
            elif what == "nprobe":  # no refinement: the IVF-PQ inside the refine wrapper, searched directly
                served = ServedIndex(
                    faiss.downcast_index(index.base_index), replace(base, nprobe=v, refine=0)
                )
            else:
                served = ServedIndex(index, replace(base, nprobe=v[0], refine=v[1]))
            t0 = time.perf_counter()
            _, ids = search(served, q, k)
            t = time.perf_counter() - t0
            rec, nn = recall_vs_exact(ids, truth)
            label = f"{what}={v}"
            print(
                f"  {label:24s} {args.queries / t:10,.0f} queries/s   recall@{k} {rec:.4f}   nn@{k} {nn:.4f}"
            )
            rows.append((name, label, t_build, size, args.queries / t, rec, nn))
    print("\n| index | search setting | build s | index MB | queries/s | recall@10 | nn@10 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, label, tb, size, qps, rec, nn in rows:
        print(f"| {name} | {label} | {tb:.0f} | {size / 1e6:,.0f} | {qps:,.0f} | {rec:.4f} | {nn:.4f} |")


if __name__ == "__main__":
    main()
