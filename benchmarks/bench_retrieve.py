"""Benchmark: exact evaluation at University-1652's 160k scale against the bare score matmul and the
per-query sort loop.

Case: 37,855 drone queries against a 160,000-tile satellite gallery (University-1652's 951 test tiles
plus 159,049 distractor tiles, as in ``test_160k.py``), d = 2560 (DINOv3 ViT-H+ with two fused layers),
random L2-normalised float32 descriptors, protocol u1652, one positive per query. The full score matrix
would be 37,855 x 160,000 x 4 B = 24 GB, so everything here works in blocks of queries.

Timed, on the device given (``--device auto``: CUDA when present, else CPU; the script runs unchanged on
either):

* **bare matmul**: ``torch.mm`` of every query block against the gallery, into a reused buffer, nothing
  else: the floor any exact evaluation pays;
* **evaluate**: ``retrieve.metrics.evaluate`` end to end (blocked matmul, counting the negatives above each
  positive, running top-10, AP/CMC);
* **per-query loop**: University-1652's ``evaluate_gpu.py`` recipe (one matrix-vector product per query on
  the device, then a full ``argsort`` of the row in numpy, masks, CMC row, trapezoidal AP), timed on a
  random subset of ``--loop-sample`` queries and extrapolated linearly. Its ranks and APs on that subset
  are checked against evaluate's (identical, except where a positive ties a negative exactly).

Run: ``python benchmarks/bench_retrieve.py`` (full size, CPU: about 15-30 min on 2 cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_metrics import baseline_query  # noqa: E402
from cvgl.retrieve.metrics import _queries_per_block, evaluate  # noqa: E402

N_TRUE_TILES = 951  # University-1652 test satellite tiles (701 buildings + 250 distractor buildings)
N_BUILDINGS = 701  # buildings that have drone queries


def make_case(n_q: int, n_g: int, dim: int, seed: int, device: torch.device):
    """Random unit descriptors (generated on ``device``, returned on the CPU) and University-1652 labels."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(n_q, dim, generator=gen, device=device)
    g = torch.randn(n_g, dim, generator=gen, device=device)
    q = torch.nn.functional.normalize(q, dim=1).cpu().numpy()
    g = torch.nn.functional.normalize(g, dim=1).cpu().numpy()
    # Gallery: the 951 true tiles first, then distractor tiles, each its own label (none is junk).
    gl = np.arange(n_g, dtype=np.int64)
    ql = (np.arange(n_q) % min(N_BUILDINGS, n_g)).astype(np.int64)
    return q, ql, g, gl


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_matmul(q: np.ndarray, g: np.ndarray, device: torch.device) -> float:
    """Seconds for the blocked score matmul alone (same block size as evaluate), gallery already on device."""
    gt = torch.from_numpy(g).to(device)
    qt = torch.from_numpy(q).to(device)
    b = _queries_per_block(g.shape[0])
    buf = torch.empty((b, g.shape[0]), dtype=torch.float32, device=device)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, q.shape[0], b):
            qb = qt[s : s + b]
            torch.mm(qb, gt.T, out=buf[: qb.shape[0]])
    sync(device)
    return time.perf_counter() - t0


def loop_sample(q, ql, g, gl, idx: np.ndarray, device: torch.device) -> tuple[float, np.ndarray, np.ndarray]:
    """University-1652's per-query recipe on queries ``idx``: (seconds, first ranks, APs)."""
    gt = torch.from_numpy(g).to(device)
    qt = torch.from_numpy(q).to(device)
    first = np.empty(idx.size, np.int64)
    ap = np.empty(idx.size, np.float64)
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for n, i in enumerate(idx):
            score = torch.mm(gt, qt[i].view(-1, 1)).squeeze(1).cpu().numpy()
            ap[n], _, first[n] = baseline_query(score, int(ql[i]), gl)
    return time.perf_counter() - t0, first, ap


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 x 10,000 x 256: seconds")
    p.add_argument("--n-queries", type=int, default=37_855)
    p.add_argument("--n-gallery", type=int, default=160_000)
    p.add_argument("--dim", type=int, default=2560)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--loop-sample", type=int, default=100, help="queries timed in the per-query loop")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n_queries, args.n_gallery, args.dim = 2_000, 10_000, 256
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    n_q, n_g, d = args.n_queries, args.n_gallery, args.dim
    print(f"python {platform.python_version()}, torch {torch.__version__}, device {device}")
    if device.type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name(device)}")
    print(f"torch threads: {torch.get_num_threads()}")
    gflop = 2 * n_q * n_g * d / 1e9
    print(
        f"case: {n_q:,} queries x {n_g:,} gallery, d={d}; full score matrix {n_q * n_g * 4 / 1e9:.1f} GB; "
        f"matmul {gflop:,.0f} GFLOP; block {_queries_per_block(n_g)} queries"
    )
    q, ql, g, gl = make_case(n_q, n_g, d, args.seed, device)

    t_mm = bare_matmul(q, g, device)
    print(f"bare matmul:            {t_mm:9.2f} s  ({gflop / t_mm:,.0f} GFLOP/s)")

    sync(device)
    t0 = time.perf_counter()
    metrics, res = evaluate(q, ql, g, gl, "u1652", topk=10, device=device)
    sync(device)
    t_eval = time.perf_counter() - t0
    print(f"evaluate (end to end):  {t_eval:9.2f} s  = {t_eval / t_mm:.2f}x the bare matmul")
    print("metrics: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in ("R@1", "R@5", "R@10", "R@1%", "AP")))

    rng = np.random.default_rng(args.seed + 1)
    idx = np.sort(rng.choice(n_q, size=min(args.loop_sample, n_q), replace=False))
    t_loop, first, ap = loop_sample(q, ql, g, gl, idx, device)
    t_loop_all = t_loop * n_q / idx.size
    print(
        f"per-query loop:         {t_loop:9.2f} s for {idx.size} queries -> {t_loop_all:,.1f} s extrapolated "
        f"to {n_q:,} = {t_loop_all / t_eval:,.1f}x evaluate's time"
    )
    same_rank = int(np.sum(first == res.first_rank[idx]))
    max_ap = float(np.max(np.abs(ap - res.ap[idx])))
    print(
        f"loop vs evaluate on the sample: {same_rank}/{idx.size} equal first ranks, max |AP diff| {max_ap:.2e}"
    )


if __name__ == "__main__":
    main()
