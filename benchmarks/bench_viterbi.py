"""Benchmark: Viterbi over a flight's top-K tiles (``retrieve.locate.sequence=hmm``), 10,000 frames × K = 50.

A synthetic flight: a random walk at ~10 m/s sampled every second; each frame's K candidates are the
true tile (centre within a few metres of the truth) plus K - 1 decoys scattered over a 5 km map, with
random scores (the true one slightly higher on average). Timed: :func:`retrieve.sequences.viterbi`
end to end (emissions, K × K transition masks, recursion, backtracking), best of ``--repeat`` runs,
and its peak memory growth (tracemalloc). Also checks the result: the share of frames whose chosen
tile is the true one, against the per-frame top-1.

Run: ``python benchmarks/bench_viterbi.py`` (10,000 × 50) or ``--frames N --k K``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvgl.retrieve.sequences import viterbi  # noqa: E402

M_PER_DEG = 6378137.0 * np.pi / 180.0


def flight(frames: int, k: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    heading = np.cumsum(rng.normal(0, 0.1, frames))
    step = np.stack([np.cos(heading), np.sin(heading)], 1) * 10.0
    track = np.cumsum(step, 0) + 2500.0  # metres
    cand = rng.uniform(0, 5000, (frames, k, 2))
    true_col = rng.integers(0, k, frames)
    cand[np.arange(frames), true_col] = track + rng.normal(0, 5, (frames, 2))
    scores = rng.normal(0.5, 0.05, (frames, k))
    scores[np.arange(frames), true_col] += 0.04
    lat = 45.0 + cand[..., 1] / M_PER_DEG
    lon = 9.0 + cand[..., 0] / (M_PER_DEG * np.cos(np.radians(45.0)))
    return lat, lon, scores, np.ones(frames - 1), np.full((frames, k), 45.0), true_col


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    lat, lon, scores, dt, radius, true_col = flight(args.frames, args.k)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        pick, breaks = viterbi(lat, lon, scores, dt, max_speed=15.0, temperature=0.02, radius=radius)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    viterbi(lat, lon, scores, dt, max_speed=15.0, temperature=0.02, radius=radius)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = " ".join(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "sse4")))
                break
    except OSError:
        pass
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    print(f"cpu flags: {flags}")
    print(f"numpy {np.__version__}, python {platform.python_version()}")
    print(f"frames × K: {args.frames} × {args.k} ({args.frames * args.k * args.k:,} transitions)")
    print(f"viterbi: best {min(times):.3f} s, all {', '.join(f'{t:.3f}' for t in times)} s")
    print(f"per frame: {1e6 * min(times) / args.frames:.1f} µs; peak traced memory {peak / 2**20:.1f} MB")
    print(f"chosen = true tile: {100 * np.mean(pick == true_col):.1f} % (per-frame top-1: "
          f"{100 * np.mean(scores.argmax(1) == true_col):.1f} %); segments: {int(breaks.sum())}")


if __name__ == "__main__":
    main()
