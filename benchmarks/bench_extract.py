"""Extraction throughput: images/s end to end, and the share of time spent outside the backbone.

Run: python3 benchmarks/bench_extract.py [--model demo|vits16-224] [--images 240] [--workers 0 2]
                                         [--batch 16] [--device auto] [--repeat 1]

End to end = decode (Pillow, in DataLoader workers when --workers > 0) + resize/normalize + forward
(all requested layers in one pass) + pooling + HDF5 shard writes (writer thread), through
``extract.runner.run_extraction``, on a synthetic dataset in the University-1652 layout, into a fresh
cache each time (the network is built once, outside the timings). The network-only time runs the same
batches, already decoded, through the backbone without pooling, so

    overhead share = 1 − network time / end-to-end time

counts everything that is not the network: decoding, pooling, copying, writing, waiting. The network
is timed right before and after each end-to-end run (their mean is used), so a drift in background
load shifts both sides alike. The same share is also given in CPU time (this process, its threads and
its reaped worker processes, from ``getrusage``), which other processes on a shared machine disturb
less than wall time (though OpenMP threads that spin while starved inflate it too). The pooling time is reported on its own (the same batches through backbone
+ pooling). On a CPU the decode workers compete with the network for the same cores, so the wall
share also depends on the core count and on what else runs: ``os.getloadavg()`` is printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cvgl.extract.runner as runner  # noqa: E402
from cvgl.cache.store import CacheStore  # noqa: E402
from cvgl.configs.schema import load_config  # noqa: E402
from cvgl.core.devices import resolve_device  # noqa: E402
from cvgl.extract.models import build_model, compute_dtype  # noqa: E402
from cvgl.extract.roots import image_lists  # noqa: E402
from cvgl.extract.runner import run_extraction  # noqa: E402

MODELS = {
    # The demo's backbone and input size (configs/demo.yaml).
    "demo": ["backbone.name=dinov3_vits16", "backbone.layers=[10,11]", "preprocess.resize=128"],
    # ViT-S/16 at 224×224 (issue: CPU images/s and overhead share).
    "vits16-224": ["backbone.name=dinov3_vits16", "backbone.layers=[10,11]", "preprocess.resize=224"],
}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and of its reaped children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="demo")
    ap.add_argument("--images", type=int, default=240, help="drone images (synthetic locations × 6 views)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="decode worker counts to compare")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--shard-rows", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=1, help="end-to-end runs per worker count")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = [
            *MODELS[args.model],
            "dataset.layout=synthetic",
            f"dataset.synthetic.n_locations={max(1, args.images // 6)}",
            "dataset.synthetic.views_per_location=6",
            "dataset.synthetic.n_distractors=0",
            "dataset.synthetic.size=256",
            f"dataset.root={Path(tmp) / 'data'}",
            "dataset.views=[query_drone]",
            f"extract.batch_size={args.batch}",
            f"extract.shard_rows={args.shard_rows}",
            f"backbone.device={args.device}",
        ]
        cfg = load_config("demo", base)
        [images] = image_lists(cfg, CacheStore(Path(tmp) / "gen"))  # generate outside the timed region
        device = resolve_device(cfg.backbone.device, "backbone.device")
        t0 = time.perf_counter()
        model = build_model(cfg, device, compute_dtype(cfg, device))
        t_build = time.perf_counter() - t0
        # Building the network is a one-off cost per run, not per image: the timed runs reuse this one.
        runner.build_model = lambda cfg, device, dtype: model

        from cvgl.extract.images import ImageDataset, iter_batches

        ds = ImageDataset(
            images, resize=cfg.preprocess.resize, mean=cfg.preprocess.mean, std=cfg.preprocess.std
        )
        t0 = time.perf_counter()
        batches = [x for _, x in iter_batches(ds, batch_size=args.batch)]
        t_decode = time.perf_counter() - t0
        layers = list(cfg.backbone.layers)
        model(batches[0])  # warm-up

        def network_seconds() -> tuple[float, float]:
            """(wall, CPU) seconds of the network alone over the decoded batches."""
            _sync(device)
            t0, c0 = time.perf_counter(), _cpu_seconds()
            for x in batches:
                model.net.forward_layers(x.to(device), layers)
            _sync(device)
            return time.perf_counter() - t0, _cpu_seconds() - c0

        t_net, _ = network_seconds()
        t0 = time.perf_counter()
        for x in batches:
            model(x)
        _sync(device)
        t_pool = time.perf_counter() - t0 - t_net

        n = len(images)
        print(
            f"model {args.model}: {cfg.backbone.name} at {cfg.preprocess.resize}px, layers {layers}, "
            f"batch {args.batch}, device {device}, torch threads {torch.get_num_threads()}, "
            f"cores {os.cpu_count()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )
        print(f"images                : {n}")
        print(f"build the network     : {t_build:7.2f} s  (once per run; not in the timings below)")
        print(f"decode (1 process)    : {t_decode:7.2f} s  ({n / t_decode:7.1f} images/s)")
        print(f"network only          : {t_net:7.2f} s  ({n / t_net:7.1f} images/s)")
        print(
            f"pooling (2 layers)    : {max(t_pool, 0):7.2f} s  ({100 * max(t_pool, 0) / t_net:5.1f} % of network)"
        )
        for workers in args.workers:
            for r in range(args.repeat):
                # The network is timed right before and after each end-to-end run, so a change in
                # the machine's background load shifts both sides of the ratio alike.
                before, cpu_before = network_seconds()
                run_cfg = load_config("demo", [*base, f"extract.num_workers={workers}"])
                store = CacheStore(Path(tmp) / f"cache-{workers}-{r}")
                t0, c0 = time.perf_counter(), _cpu_seconds()
                run_extraction(run_cfg, store)
                t_all, c_all = time.perf_counter() - t0, _cpu_seconds() - c0
                after, cpu_after = network_seconds()
                net, cpu_net = (before + after) / 2, (cpu_before + cpu_after) / 2
                share = 100 * max(0.0, 1 - net / t_all)
                cpu_share = 100 * max(0.0, 1 - cpu_net / c_all)
                print(
                    f"end to end, {workers} workers: {t_all:7.2f} s  ({n / t_all:5.2f} images/s)  "
                    f"network {net:7.2f} s (before {before:.2f}, after {after:.2f})  "
                    f"overhead share: wall {share:5.1f} %, CPU time {cpu_share:5.1f} % "
                    f"({c_all:.1f} vs {cpu_net:.1f} CPU-s)  (goal <= 10%)  "
                    f"load {os.getloadavg()[0]:.2f}"
                )
        print(f"load average after    : {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
