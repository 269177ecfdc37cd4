"""Map tiling at scale: read throughput against bare rasterio, and peak memory on a 30,000² map.

``throughput``: a generated tiled, deflate-compressed GeoTIFF (default 8,000 × 8,000 px, 0.5 m per
pixel, in /tmp) is cut with ``dataset.tiles`` (default 200 m tiles every 100 m, at scales 1 and 2,
resampled to 224 px). The same windows are read two ways, alternately, best of ``--repeat``:

* the pipeline's reading path, :meth:`cvgl.datasets.maps.TileSource.read_rgb` (what extraction calls
  for every tile: one windowed read resampled with ``out_shape``, band selection, uint8, a PIL image);
* bare rasterio: ``ds.read([1, 2, 3], window=…, out_shape=(3, px, px), resampling=cubic)`` on one open
  dataset under the same GDAL block cache size.

The ratio is bare time / pipeline time (goal ≥ 0.8). Listing the tiles (the nodata pass over the mask,
WGS84 centres and footprints) is timed separately.

``memory``: a 30,000 × 30,000 px tiled GeoTIFF (RGB uint8, deflate, a nodata corner) is generated with a
windowed writer in /tmp; a fresh process imports torch and builds the extraction model (DINOv3 ViT-S
shape, random weights), records its RSS, then lists the gallery (reading the whole mask) and reads
tiles through the extraction dataset (``ImageDataset``: window read, resize, normalize); its peak RSS
(``ru_maxrss``) minus the RSS with the model is the figure (goal ≤ 1 GB). The file is deleted at the end.

    python benchmarks/bench_maps.py throughput
    python benchmarks/bench_maps.py memory [--every 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, size: int, res: float, block: int = 512, nodata_corner: bool = True) -> None:
    """A tiled deflate GeoTIFF written strip by strip (one block row in memory at a time)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32650",
        transform=Affine(res, 0.0, 400000.0, 0.0, -res, 3500000.0), tiled=True, blockxsize=block,
        blockysize=block, compress="deflate", nodata=0, BIGTIFF="IF_SAFER",
    )  # fmt: skip
    xx = np.arange(size, dtype=np.int32)
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            yy = np.arange(r0, r0 + h, dtype=np.int32)[:, None]
            strip = np.empty((3, h, size), dtype=np.uint8)
            strip[0] = 1 + ((xx[None, :] // 7 + yy // 5) % 200)
            strip[1] = 1 + ((xx[None, :] // 3) % 150 + (yy // 11) % 50)
            strip[2] = 1 + rng.integers(0, 16, (h, size), dtype=np.uint8) + (yy % 100).astype(np.uint8)
            if nodata_corner:
                corner = max(0, size // 4 - r0)
                strip[:, : min(h, corner), : size // 4] = 0
            ds.write(strip, window=Window(0, r0, size, h))


def throughput(args: argparse.Namespace) -> dict:
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from cvgl.datasets.maps import GDAL_CACHE_MB, open_map, tile_maps, tiling_params

    tmp = Path(tempfile.mkdtemp(prefix="bench-maps-", dir=args.tmp))
    path = tmp / "map.tif"
    try:
        t0 = time.perf_counter()
        generate(path, args.size, args.res)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tiles = tile_maps([open_map(path, "map")], tiling_params(args.size_m, args.stride_m, args.scales, args.px))
        list_s = time.perf_counter() - t0
        src = tiles.source
        n = len(src)
        idx = np.arange(0, n, max(1, n // args.max_tiles))[: args.max_tiles]
        wins = src.windows[idx]
        px = src.px

        def pipeline_pass() -> float:
            t = time.perf_counter()
            for i in idx:
                src.read_rgb(int(i))
            return time.perf_counter() - t

        def bare_pass(ds) -> float:
            t = time.perf_counter()
            for c0, r0, w, h in wins:
                ds.read(
                    [1, 2, 3],
                    window=Window(int(c0), int(r0), int(w), int(h)),
                    out_shape=(3, px, px),
                    resampling=Resampling.cubic,
                )
            return time.perf_counter() - t

        bare, ours = [], []
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024):
            with rasterio.open(path) as ds:
                for k in range(args.repeat):  # alternate who goes first: neither gets a warmer cache
                    if k % 2:
                        ours.append(pipeline_pass())
                        bare.append(bare_pass(ds))
                    else:
                        bare.append(bare_pass(ds))
                        ours.append(pipeline_pass())
        return {
            "map_px": args.size,
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "generate_s": round(gen_s, 1),
            "tiles": n,
            "tiles_timed": int(len(idx)),
            "list_s": round(list_s, 2),
            "bare_s": [round(x, 3) for x in bare],
            "pipeline_s": [round(x, 3) for x in ours],
            "bare_tiles_per_s": round(len(idx) / min(bare), 1),
            "pipeline_tiles_per_s": round(len(idx) / min(ours), 1),
            "ratio": round(min(bare) / min(ours), 3),
        }
    finally:
        path.unlink(missing_ok=True)
        tmp.rmdir()


def memory_child(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: model first, then tiling; returns the RSS figures."""
    import torch

    from cvgl.configs.schema import DatasetConfig, TilesConfig, load_config
    from cvgl.datasets.map_layouts import map_image_lists
    from cvgl.extract.images import ImageDataset
    from cvgl.extract.models import build_model

    torch.set_num_threads(1)
    base = rss_mb()
    model = build_model(load_config(None, ["backbone.name=dinov3_vits16", "backbone.layers=[11]"]), torch.device("cpu"), "float32")
    with_model = rss_mb()
    q = Path(args.photos)
    ds = DatasetConfig(
        layout="map",
        root=str(q),
        maps=[args.map],
        tiles=TilesConfig(size_m=args.size_m, stride_m=args.stride_m, scales=list(args.scales), px=args.px),
    )
    t0 = time.perf_counter()
    gallery = map_image_lists(ds, ["gallery_satellite"])[0]
    list_s = time.perf_counter() - t0
    after_list = peak_mb()
    data = ImageDataset(gallery, resize=224)
    t0 = time.perf_counter()
    read = 0
    for i in range(0, len(gallery), args.every):
        data.load(i)
        read += 1
    read_s = time.perf_counter() - t0
    del model
    return {
        "rss_imports_mb": round(base, 1),
        "rss_with_model_mb": round(with_model, 1),
        "peak_after_listing_mb": round(after_list, 1),
        "peak_mb": round(peak_mb(), 1),
        "peak_above_model_mb": round(peak_mb() - with_model, 1),
        "tiles": len(gallery),
        "tiles_read": read,
        "list_s": round(list_s, 1),
        "read_s": round(read_s, 1),
    }


def memory(args: argparse.Namespace) -> dict:
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="bench-maps-", dir=args.tmp))
    path = tmp / "big.tif"
    photos = tmp / "photos"
    photos.mkdir()
    Image.new("RGB", (32, 32)).save(photos / "frame.png")
    try:
        t0 = time.perf_counter()
        generate(path, args.size, args.res)
        gen_s = time.perf_counter() - t0
        cmd = [
            sys.executable, __file__, "_memory_child", "--map", str(path), "--photos", str(photos),
            "--size-m", str(args.size_m), "--stride-m", str(args.stride_m), "--px", str(args.px),
            "--every", str(args.every), "--scales", *[str(s) for s in args.scales],
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return {"map_px": args.size, "file_mb": round(path.stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1), **result}
    finally:
        path.unlink(missing_ok=True)
        (photos / "frame.png").unlink(missing_ok=True)
        photos.rmdir()
        tmp.rmdir()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["throughput", "memory", "_memory_child"])
    ap.add_argument("--size", type=int, default=None, help="map side in pixels (8000 throughput, 30000 memory)")
    ap.add_argument("--res", type=float, default=0.5, help="metres per pixel")
    ap.add_argument("--size-m", type=float, default=200.0)
    ap.add_argument("--stride-m", type=float, default=100.0)
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--px", type=int, default=224)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-tiles", type=int, default=600, help="throughput: tiles timed (spread over the map)")
    ap.add_argument("--every", type=int, default=1, help="memory: read every k-th tile")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--map")
    ap.add_argument("--photos")
    args = ap.parse_args()
    if args.mode == "_memory_child":
        print(json.dumps(memory_child(args)))
        return
    if args.size is None:
        args.size = 8000 if args.mode == "throughput" else 30000
    result = throughput(args) if args.mode == "throughput" else memory(args)
    print(json.dumps({"mode": args.mode, **result}, indent=1))


if __name__ == "__main__":
    main()
