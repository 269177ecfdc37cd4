"""GPU extraction benchmark: DINOv3 ViT-H+/16 (random weights) at 512×512, the pipeline vs the reference.

Run (one GPU):   python3 benchmarks/bench_extract_gpu.py [--images 2048] [--batch auto] [--workers 8]
Smoke (any CPU): python3 benchmarks/bench_extract_gpu.py --small

What it measures, in one process on one device:

1. **Peak**: the device's bf16 matmul throughput, measured here with a large square bf16 matmul
   (so the model-FLOP share compares against what this device really does, not a datasheet).
2. **Pipeline**: ``extract.runner.run_extraction`` end to end (JPEG decode in DataLoader workers,
   pinned memory and non-blocking copies, bf16 autocast, SDPA attention, batched GeM pooling of
   layers 26 and 28 in one pass, HDF5 shards written by the writer thread) into a fresh cache;
   the batch size from ``extract.batch_size=auto`` (its probe is timed separately).
   Also the network + pooling alone on batches already on the device.
3. **Reference** (GeoAlign's extractor, ``JZLhope/GeoAlign`` ``extractor.py``): float32 (no autocast),
   batch 64, 4 workers, the same forward, then the per-image pooling loop (normalize each image's
   map, GeM, normalize, one image at a time) and a device-to-host copy per batch.

Model FLOPs per image are counted analytically (matmuls and attention of the blocks that run, i.e.
up to the deepest requested layer, plus the patch embedding); model-FLOP share = achieved FLOP/s ÷
measured peak. Random weights run at the same speed as trained ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cvgl.extract.runner as runner  # noqa: E402
from cvgl.cache.store import CacheStore  # noqa: E402
from cvgl.configs.schema import load_config  # noqa: E402
from cvgl.core.devices import resolve_device  # noqa: E402
from cvgl.extract.dinov3 import DINOv3Backbone, DINOv3Variant, resolve_variant  # noqa: E402
from cvgl.extract.models import DinoModel, choose_batch_size, compute_dtype  # noqa: E402
from cvgl.extract.ranks import Ranks  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_flops(device: torch.device, n: int, iters: int, dtype: torch.dtype) -> float:
    """FLOP/s of an n×n×n matmul in ``dtype`` on ``device`` (best of 3 timings)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * iters / best


def vit_flops_per_image(v: DINOv3Variant, res: int, deepest: int) -> float:
    """Multiply-adds ×2 of the patch embedding and blocks 0..deepest for one ``res``×``res`` image."""
    patches = (res // v.patch_size) ** 2
    t = 1 + v.num_register_tokens + patches
    c, i = v.hidden_size, v.intermediate_size
    attn_proj = 2 * t * 4 * c * c  # q, k, v, o
    attn_core = 2 * 2 * t * t * c  # QKᵀ and AV
    ffn = 2 * t * c * i * (3 if v.ffn == "swiglu" else 2)
    embed = 2 * patches * 3 * v.patch_size**2 * c
    return embed + (deepest + 1) * (attn_proj + attn_core + ffn)


def make_images(root: Path, n: int, res: int, unique: int = 32, seed: int = 0) -> Path:
    """``n`` JPEGs in the folder layout (copies of ``unique`` smooth random images: decoding cost is what
    matters here, and generating thousands of distinct 512² images would take longer than the benchmark)."""
    rng = np.random.default_rng(seed)
    pool = []
    for k in range(unique):
        low = rng.integers(0, 256, (res // 16, res // 16, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((res, res), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 8, (res, res, 3))
        arr = np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8)
        p = root / "src" / f"{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(p, quality=90)
        pool.append(p)
    data = root / "images"
    for k in range(n):
        dst = data / f"{k % 10:02d}" / f"{k:06d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pool[k % unique], dst)
    return data


def build_net(name: str, arch: dict, device: torch.device, seed: int = 0) -> DINOv3Backbone:
    """A random DINOv3 built directly on ``device`` (a CPU init of 840M parameters takes minutes)."""
    from transformers import DINOv3ViTModel

    variant = resolve_variant(name, arch or None)
    with torch.random.fork_rng(devices=[]):  # seeds (and leaves) the CPU generator; CUDA's is reseeded
        torch.manual_seed(seed)
        with torch.device(device):
            model = DINOv3ViTModel(variant.hf_config())
    return DINOv3Backbone(variant, model.float().eval(), source=f"random(seed={seed})")


def reference_extract(net: DINOv3Backbone, data: Path, layers: list[int], batch: int, workers: int) -> float:
    """GeoAlign's extraction loop: float32, per-image pooling; returns images/s."""
    from cvgl.datasets.layouts import list_images
    from cvgl.extract.images import ImageDataset, iter_batches

    device = next(net.parameters()).device
    saved = net.cuda_autocast_dtype
    net.cuda_autocast_dtype = None  # float32 throughout, as GeoAlign runs it
    images = list_images("folder", data, "images")
    ds = ImageDataset(images)
    p = net.num_prefix_tokens
    feats: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    try:
        first = True
        t0 = time.perf_counter()
        for _, x in iter_batches(ds, batch_size=batch, num_workers=workers):
            if first:  # start the clock after the first batch: the workers' start is not the loop's cost
                _sync(device)
                t0, first, n_timed = time.perf_counter(), False, 0
            x = x.to(device)
            tokens = net.forward_layers(x, layers)
            h, w = x.shape[-2] // net.patch_size, x.shape[-1] // net.patch_size
            for L in layers:
                fmap = tokens[L][:, p:].reshape(len(x), h, w, -1).permute(0, 3, 1, 2)
                vecs = []
                for i in range(fmap.shape[0]):
                    f_i = F.normalize(fmap[i], p=2, dim=0)
                    v = f_i.clamp(min=1e-6).pow(3.0).mean(dim=(1, 2)).pow(1.0 / 3.0)
                    vecs.append(F.normalize(v, dim=0))
                feats[L].append(torch.stack(vecs).cpu())
            n_timed += len(x)
        _sync(device)
        seconds = time.perf_counter() - t0
    finally:
        net.cuda_autocast_dtype = saved
    return n_timed / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny model and images: a smoke check on any CPU")
    ap.add_argument("--model", default=None, help="DINOv3 variant (default dinov3_vith16plus)")
    ap.add_argument("--res", type=int, default=None, help="image side (default 512)")
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="blocks (default 26 28)")
    ap.add_argument("--images", type=int, default=None, help="images per timed run (default 2048)")
    ap.add_argument("--batch", default="auto", help="pipeline batch size: auto or an integer")
    ap.add_argument("--workers", type=int, default=None, help="pipeline decode workers (default 8)")
    ap.add_argument("--ref-batch", type=int, default=64, help="reference batch size (GeoAlign: 64)")
    ap.add_argument("--ref-workers", type=int, default=None, help="reference workers (GeoAlign: 4)")
    ap.add_argument("--compile", action="store_true", help="backbone.compile=true for the pipeline")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device, "--device")
    if device.type != "cuda" and not args.small:
        raise SystemExit("no CUDA device: this benchmark needs a GPU; run with --small for a CPU smoke check")
    small = args.small
    name = args.model or ("dinov3_vits16" if small else "dinov3_vith16plus")
    arch = {"depth": 4} if small else {}
    res = args.res or (64 if small else 512)
    layers = args.layers or ([2, 3] if small else [26, 28])
    n = args.images or (64 if small else 2048)
    workers = args.workers if args.workers is not None else (2 if small else 8)
    ref_workers = args.ref_workers if args.ref_workers is not None else (2 if small else 4)
    peak_n, peak_iters = (1024, 5) if small else (8192, 50)

    info = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}, device {info}, torch {torch.__version__}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    # The pipeline computes in bf16 on CUDA; a CPU (--small) computes in float32, so its peak is float32.
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_matmul_flops(device, peak_n, peak_iters, peak_dtype)
    print(f"peak {str(peak_dtype)[6:]} matmul ({peak_n}³): {peak / 1e12:8.3f} TFLOP/s (measured)")

    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp), n, res)
        net = build_net(name, arch, device)
        variant = net.variant
        flops = vit_flops_per_image(variant, res, max(layers))
        print(
            f"model {name}{' ' + str(arch) if arch else ''} at {res}², layers {layers}: {flops / 1e9:.1f} GFLOP/image"
        )

        base = [
            "layout=folder",
            f"root={data}",
            "dataset.views=[images]",
            f"backbone.name={name}",
            f"backbone.arch={arch}" if arch else "backbone.arch={}",
            f"backbone.layers={layers}",
            f"backbone.device={device}",
            "preprocess.resize=null",
            f"extract.num_workers={workers}",
            "extract.shard_rows=1024",
            "extract.dtype=float16",
            f"backbone.compile={'true' if args.compile else 'false'}",
        ]
        cfg = load_config(None, [*base, "extract.batch_size=auto"])
        dtype = compute_dtype(cfg, device)
        model = DinoModel(cfg, device, dtype, net=net)
        runner.build_model = lambda cfg, device, dtype: DinoModel(cfg, device, dtype, net=net)
        if args.batch == "auto":
            t0 = time.perf_counter()
            batch = choose_batch_size(cfg, model, (res, res), Ranks())
            print(f"batch_size=auto chose {batch} in {time.perf_counter() - t0:.1f} s")
        else:
            batch = int(args.batch)
        cfg = load_config(None, [*base, f"extract.batch_size={batch}"])

        # Network + pooling alone, batches already on the device.
        x = torch.randn(batch, 3, res, res, device=device)
        model(x)
        _sync(device)
        reps = max(1, min(10, n // batch))
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        _sync(device)
        fwd_rate = reps * batch / (time.perf_counter() - t0)

        store = CacheStore(Path(tmp) / "cache")
        t0 = time.perf_counter()
        [entry, *_] = runner.run_extraction(cfg, store)
        pipe_s = time.perf_counter() - t0
        pipe_rate = entry.count / pipe_s

        ref_rate = reference_extract(net, data, layers, args.ref_batch, ref_workers)

    def share(rate: float) -> str:
        return f"{100 * rate * flops / peak:5.1f} %"

    print(f"{'':34s} {'images/s':>10s} {'model-FLOP share':>17s}")
    print(f"{'pipeline, end to end (' + dtype + ')':34s} {pipe_rate:10.1f} {share(pipe_rate):>17s}")
    print(f"{'network + pooling only':34s} {fwd_rate:10.1f} {share(fwd_rate):>17s}")
    print(f"{'reference (float32, per-image loop)':34s} {ref_rate:10.1f} {share(ref_rate):>17s}")
    print(
        f"speed-up over the reference: {pipe_rate / ref_rate:.2f}×; pipeline overhead vs network: "
        f"{100 * max(0.0, 1 - pipe_rate / fwd_rate):.1f} %"
    )
    print(f"batch {batch}, workers {workers}; reference batch {args.ref_batch}, workers {ref_workers}")


if __name__ == "__main__":
    main()
