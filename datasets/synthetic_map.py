"""A synthetic georeferenced map and a drone flight over it, for ``pipeline demo map`` and the tests.

The map is a mosaic of the synthetic world generator's scenes (:mod:`datasets.synthetic`: fields,
roads, buildings with shadows, water, trees), ``blocks`` × ``blocks`` of them, written as a tiled,
deflate-compressed RGB GeoTIFF with overviews in a projected CRS (UTM zone 32N by default) at
``mpp`` metres per pixel. The flight is a smooth figure-of-eight over the map, sampled every
``interval_s`` seconds at ``speed_mps``; each frame is rendered from the map like the synthetic drone
views (random rotation, oblique perspective, zoom, illumination, haze, blur and noise) around the
frame's true position, which is written to ``positions.csv`` (``name,lat,lon,time,height,yaw``)
together with its time.

Layout under the root::

    map.tif                       the georeferenced map
    frames/flight01/f0000.jpg     the flight's frames (one folder = one sequence)
    positions.csv                 true positions and times of the frames
    synthetic-map.json            marker: parameters and a summary ("complete": true is written last)

The same arguments give byte-identical files; a complete folder with the same parameters is reused
(same bytes and mtimes, hence the same cache keys), under the same lock-and-rename scheme as the
University-1652 generator.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.core.atomic import write_text_atomic
from cvgl.core.errors import UserError
from cvgl.datasets.synthetic import (
    _drone_view,
    _jpeg,
    _make_world,
    _rng,
    generate_atomically,
    generation_lock,
    refuse_foreign,
)
from PIL import Image

MARKER = "synthetic-map.json"
_NAMES = frozenset({MARKER, MARKER + ".tmp", "map.tif", "frames", "positions.csv"})
_FORMAT_VERSION = 1
_MAP, _FLIGHT = 11, 12  # seed-stream purposes (distinct from datasets.synthetic's)
FLIGHT = "flight01"


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _is_ours(folder: Path) -> bool:
    c = _read_marker(folder)
    return c is not None and isinstance(c.get("params"), dict)


def map_image(seed: int, blocks: int, block_px: int) -> np.ndarray:
    """The map's pixels (``blocks * block_px`` square, RGB uint8): a mosaic of world scenes."""
    side = blocks * block_px
    out = np.zeros((side, side, 3), dtype=np.uint8)
    for r in range(blocks):
        for c in range(blocks):
            scene = _make_world(_rng(seed, _MAP, r, c), block_px, 128)
            out[r * block_px : (r + 1) * block_px, c * block_px : (c + 1) * block_px] = np.asarray(scene)
    return out


def flight_path(n: int, side_m: float, step_m: float, margin_m: float) -> np.ndarray:
    """``n`` points (east, north metres from the map's top-left corner, north negative) ``step_m`` apart
    along a figure-of-eight inside the map, ``margin_m`` from its edges."""
    t = np.linspace(0, 2 * math.pi, 4000)
    half = side_m / 2 - margin_m
    x = side_m / 2 + half * np.sin(t)
    y = side_m / 2 + half * 0.8 * np.sin(2 * t)
    seg = np.hypot(np.diff(x), np.diff(y))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    want = np.arange(n) * step_m
    if want[-1] > s[-1]:
        raise UserError(f"a flight of {n} frames {step_m} m apart does not fit the map; use fewer frames")
    return np.stack([np.interp(want, s, x), -np.interp(want, s, y)], axis=1)


def make_synthetic_map(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    blocks: int = 5,
    block_px: int = 280,
    mpp: float = 1.0,
    n_frames: int = 100,
    frame_px: int = 128,
    speed_mps: float = 10.0,
    interval_s: float = 2.0,
    epsg: int = 32632,
    origin: tuple[float, float] = (499300.0, 5000700.0),
) -> dict[str, Any]:
    """Write (or reuse) the synthetic map and flight under ``root``; returns a summary with the paths.

    ``origin``: the map's top-left corner (easting, northing) in ``EPSG:epsg``.
    """
    params = {
        "seed": seed, "blocks": blocks, "block_px": block_px, "mpp": mpp, "n_frames": n_frames,
        "frame_px": frame_px, "speed_mps": speed_mps, "interval_s": interval_s, "epsg": epsg,
        "origin": list(origin),
    }  # fmt: skip
    if blocks < 1 or block_px < 64 or n_frames < 2 or frame_px < 32 or not mpp > 0:
        raise UserError(f"synthetic map parameters out of range: {params}")
    root_path = Path(root).expanduser()
    refuse_foreign(root_path, _is_ours, _NAMES)
    with generation_lock(root_path):
        done = _read_marker(root_path)
        if done and done.get("complete") and done.get("version") == _FORMAT_VERSION and done.get("params") == params:
            return _summary(root_path, done["summary"])
        stored = generate_atomically(
            root_path, lambda work: _build(work, params), is_ours=_is_ours, names=_NAMES, marker=MARKER
        )
    return _summary(root_path, stored)


def _summary(root: Path, stored: dict[str, Any]) -> dict[str, Any]:
    return {
        "root": str(root),
        "map": str(root / "map.tif"),
        "frames": str(root / "frames"),
        "positions": str(root / "positions.csv"),
        **stored,
    }


def _build(work: Path, p: dict[str, Any]) -> dict[str, Any]:
    import rasterio
    from pyproj import Transformer
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin

    marker = {"version": _FORMAT_VERSION, "params": p, "complete": False}
    write_text_atomic(work / MARKER, json.dumps(marker))
    img = map_image(p["seed"], p["blocks"], p["block_px"])
    side_px = img.shape[0]
    mpp = float(p["mpp"])
    x0, y0 = (float(v) for v in p["origin"])
    transform = from_origin(x0, y0, mpp, mpp)
    tif = work / "map.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", width=side_px, height=side_px, count=3, dtype="uint8",
        crs=f"EPSG:{p['epsg']}", transform=transform, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate",
    ) as ds:  # fmt: skip
        ds.write(np.transpose(img, (2, 0, 1)))
        ds.build_overviews([2, 4, 8], Resampling.average)
    os.utime(tif, (0, 0))  # fixed mtime: a regenerated identical file keeps the same cache key

    # The flight: positions in metres from the top-left corner, then pixels, CRS and WGS84.
    fpx = int(p["frame_px"])
    step = float(p["speed_mps"]) * float(p["interval_s"])
    side_m = side_px * mpp
    path = flight_path(int(p["n_frames"]), side_m, step, margin_m=fpx * mpp * 1.2)
    to_wgs = Transformer.from_crs(f"EPSG:{p['epsg']}", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs.transform(x0 + path[:, 0], y0 + path[:, 1])
    heading = np.degrees(np.arctan2(np.gradient(path[:, 0]), np.gradient(path[:, 1])))
    world = Image.fromarray(img, "RGB")
    frames = work / "frames" / FLIGHT
    frames.mkdir(parents=True)
    rows = []
    half = fpx  # the render reads a 2 * frame_px square around the position
    for i, (e, n) in enumerate(path):
        col, row = e / mpp, -n / mpp
        box = (int(round(col)) - half, int(round(row)) - half, int(round(col)) + half, int(round(row)) + half)
        view = _drone_view(world.crop(box), _rng(p["seed"], _FLIGHT, i), fpx)
        name = f"{FLIGHT}/f{i:04d}.jpg"
        (work / "frames" / name).write_bytes(_jpeg(view))
        os.utime(work / "frames" / name, (0, 0))
        rows.append([name, f"{lat[i]:.9f}", f"{lon[i]:.9f}", f"{i * float(p['interval_s']):.3f}", "120", f"{heading[i] % 360:.2f}"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["name", "lat", "lon", "time", "height", "yaw"])
    w.writerows(rows)
    write_text_atomic(work / "positions.csv", buf.getvalue())
    os.utime(work / "positions.csv", (0, 0))
    summary = {
        "map_px": side_px,
        "map_m": side_m,
        "area_km2": round(side_m * side_m / 1e6, 3),
        "crs": f"EPSG:{p['epsg']}",
        "n_frames": len(rows),
        "flight_m": round(step * (len(rows) - 1), 1),
    }
    marker.update(complete=True, summary=summary)
    write_text_atomic(work / MARKER, json.dumps(marker))
    return summary
