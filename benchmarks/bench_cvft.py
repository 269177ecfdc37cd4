"""CVFT head training and encoding throughput from in-memory conv5_3 maps at CVFT's real shapes.

Ground maps are VGG16 conv5_3 of a 112×616 panorama ([512, 7, 39] with CVFT's 'SAME' pooling;
``--torchvision-pooling`` gives [512, 7, 38]); aerial maps of a 256×256 tile ([512, 16, 16]). Maps are
held as float16 (the cache's storage dtype) and converted per batch, as when streaming from shards.

    python benchmarks/bench_cvft.py --threads 2 --pairs 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from cvgl.align.train_cvft import CVFTConfig, encode_aerial, encode_ground, train_cvft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=512, help="pairs per timed epoch")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--variants", default="cvft,vgg_conv")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3, help="timed epochs (after one warm-up epoch)")
    ap.add_argument("--torchvision-pooling", action="store_true", help="ground maps 7×38 instead of 7×39")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    gw = 38 if args.torchvision_pooling else 39
    # Post-ReLU maps: non-negative with a long tail, like real conv5_3 activations.
    ground = torch.relu(torch.randn(args.pairs, 512, 7, gw, generator=gen)).to(torch.float16)
    aerial = torch.relu(torch.randn(args.pairs, 512, 16, 16, generator=gen)).to(torch.float16)

    def gfn(idx):
        return ground[torch.as_tensor(idx)]

    def afn(idx):
        return aerial[torch.as_tensor(idx)]

    results = {
        "device": args.device,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "load_avg_1min": os.getloadavg()[0],
        "ground_map": [512, 7, gw],
        "aerial_map": [512, 16, 16],
        "batch_size": args.batch_size,
    }
    for variant in args.variants.split(","):
        cfg = CVFTConfig(variant=variant, epochs=1 + args.repeat, batch_size=args.batch_size)
        # Epoch 1 warms up allocators and kernels; the others are timed. On a shared machine other
        # jobs only ever slow a run down, so the best epoch is the least disturbed measurement.
        model, hist = train_cvft(gfn, afn, args.pairs, cfg, seed=0, device=args.device)
        train = sorted(r["pairs_per_s"] for r in hist[1:])
        enc = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            encode_ground(model, ground, batch_size=256)
            encode_aerial(model, aerial, batch_size=256)
            enc.append(args.pairs / (time.perf_counter() - t0))
        results[variant] = {
            "train_pairs_per_s_best": round(train[-1], 1),
            "train_pairs_per_s_median": round(train[len(train) // 2], 1),
            "encode_pairs_per_s_best": round(max(enc), 1),
        }
        print(variant, results[variant], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
