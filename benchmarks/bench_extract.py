"""Extraction throughput: images/s end to end, and the share of time spent outside the backbone.

Run: python3 benchmarks/bench_extract.py [--model demo|vits16-224] [--images 240] [--workers 0]

End to end = decode (Pillow) + resize/normalize + forward (all requested layers in one pass) +
pooling + HDF5 shard writes, through `extract.runner.run_extraction`, on a synthetic dataset in the
University-1652 layout. The forward-only time runs the same batches, already decoded, through the
same backbone, so overhead = 1 − forward / end-to-end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.store import CacheStore  # noqa: E402
from configs.schema import load_config  # noqa: E402
from extract.runner import _Model, compute_dtype, image_lists, resolve_device, run_extraction  # noqa: E402

MODELS = {
    # The demo's backbone and input size (configs/demo.yaml).
    "demo": ["backbone.name=dinov3_vits16", "backbone.layers=[10,11]", "preprocess.resize=128"],
    # ViT-S/16 at 224×224 (issue: CPU images/s and overhead share).
    "vits16-224": ["backbone.name=dinov3_vits16", "backbone.layers=[10,11]", "preprocess.resize=224"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="demo")
    ap.add_argument("--images", type=int, default=240, help="drone images (synthetic locations × 6 views)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            *MODELS[args.model],
            "dataset.layout=synthetic",
            f"dataset.synthetic.n_locations={max(1, args.images // 6)}",
            "dataset.synthetic.views_per_location=6",
            "dataset.synthetic.n_distractors=0",
            "dataset.synthetic.size=256",
            "dataset.views=[query_drone]",
            f"extract.batch_size={args.batch}",
            f"extract.num_workers={args.workers}",
            "extract.shard_rows=1024",
            f"backbone.device={args.device}",
        ]
        cfg = load_config("demo", overrides)
        store = CacheStore(Path(tmp) / "cache")
        [images] = image_lists(cfg, store)  # generate the dataset outside the timed region
        device = resolve_device(cfg.backbone.device)
        model = _Model(cfg, device, compute_dtype(cfg, device))

        from extract.images import ImageDataset, iter_batches

        ds = ImageDataset(images, resize=cfg.preprocess.resize, mean=cfg.preprocess.mean, std=cfg.preprocess.std)
        batches = [x for _, x in iter_batches(ds, batch_size=args.batch)]
        model(batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_fwd = time.perf_counter() - t0

        t0 = time.perf_counter()
        run_extraction(cfg, store)
        t_all = time.perf_counter() - t0
        n = len(images)
        print(f"model {args.model}: {cfg.backbone.name} at {cfg.preprocess.resize}px, layers {cfg.backbone.layers}, "
              f"batch {args.batch}, workers {args.workers}, device {device}, torch threads {torch.get_num_threads()}")
        print(f"images                : {n}")
        print(f"forward only          : {t_fwd:7.2f} s  ({n / t_fwd:7.1f} images/s)")
        print(f"end to end (extract)  : {t_all:7.2f} s  ({n / t_all:7.1f} images/s)")
        print(f"overhead share        : {100 * max(0.0, 1 - t_fwd / t_all):5.1f} %  (decode, pooling, writing; goal <= 10%)")


if __name__ == "__main__":
    main()
