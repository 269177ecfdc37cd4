"""Cache read throughput: a 50,000 × 1,280 float16 entry vs a plain sequential read of the same bytes.

Run: python3 benchmarks/bench_cache.py [--rows 50000] [--dim 1280] [--repeats 5]

Both reads come from the page cache (each is warmed once first), so the ratio measures the cost of
the cache format (HDF5 chunking, fletcher32 checksums, per-shard opening) rather than the disk.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvgl.cache.store import CacheStore  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    desc = rng.standard_normal((args.rows, args.dim), dtype=np.float32).astype(np.float16)
    labels = rng.integers(0, 1000, args.rows)
    names = [f"gallery/{i:06d}.jpg" for i in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        store = CacheStore(Path(tmp) / "cache")
        entry = store.put_arrays({"kind": "bench"}, desc, labels, names, alias="bench", dtype="float16")
        raw = Path(tmp) / "plain.bin"
        desc.tofile(raw)

        def read_cache() -> None:
            total = 0
            for d, _, _ in store.open("bench").iter_chunks(dtype=None):
                total += d.shape[0]
            assert total == args.rows

        def read_plain() -> None:
            a = np.fromfile(raw, dtype=np.float16)
            assert a.size == args.rows * args.dim

        read_cache()
        read_plain()
        t_cache = best_of(read_cache, args.repeats)
        t_plain = best_of(read_plain, args.repeats)
        mb = desc.nbytes / 2**20
        print(f"entry: {args.rows} x {args.dim} float16 = {mb:.0f} MiB in {len(entry.shard_paths())} shards")
        print(f"plain sequential read : {t_plain * 1e3:8.1f} ms  ({mb / t_plain:7.0f} MiB/s)")
        print(f"cache streaming read  : {t_cache * 1e3:8.1f} ms  ({mb / t_cache:7.0f} MiB/s)")
        print(f"ratio (plain / cache) : {t_plain / t_cache:.2f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
