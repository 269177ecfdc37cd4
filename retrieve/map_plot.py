"""``map.png`` and tile crops for ``protocol=map``: the maps read decimated, never in full.

The picture is an equirectangular canvas (north up, metres east scaled by the cosine of the centre's
latitude) over the maps' extent and the tracks. Each map is read once through rasterio at about the
canvas's resolution (``out_shape``: GDAL uses the file's overviews when it has them, and otherwise
decimates while reading), then every canvas pixel looks up its nearest map sample through pyproj, so
maps in any CRS, several at once, land in the right place.

Drawn on top: the true track (white), the per-frame estimates as dots coloured by their error
(green → yellow → red, saturating at the 95th percentile), and the smoothed track (cyan) when there
is one. Map tiles shown in report.html are windows of the raster read at thumbnail size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cvgl.core.atomic import atomic_path
from cvgl.datasets.maps import MapGeo

CANVAS_PX = 1100


def _open(path: str | Path):  # noqa: ANN202 - rasterio dataset
    import rasterio

    return rasterio.open(path)


def map_bounds_wgs84(maps: Sequence[MapGeo]) -> tuple[float, float, float, float] | None:
    """(lat_min, lat_max, lon_min, lon_max) of the maps' corners, or None without maps."""
    lats, lons = [], []
    for m in maps:
        lo, la = m.pixel_to_lonlat(np.array([0, m.width, m.width, 0]), np.array([0, 0, m.height, m.height]))
        lats.extend(np.asarray(la).tolist())
        lons.extend(np.asarray(lo).tolist())
    if not lats:
        return None
    return min(lats), max(lats), min(lons), max(lons)


def _error_colours(err: np.ndarray) -> tuple[np.ndarray, float]:
    """RGB uint8 per error (green → yellow → red) and the error at which red saturates."""
    finite = err[np.isfinite(err)]
    top = float(np.percentile(finite, 95)) if finite.size else 1.0
    top = max(top, 1.0)
    t = np.clip(np.nan_to_num(err, nan=0.0) / top, 0, 1)
    r = np.clip(2 * t, 0, 1)
    g = np.clip(2 * (1 - t), 0, 1)
    rgb = np.stack([r, g, np.zeros_like(t)], 1) * 230 + 20
    rgb[~np.isfinite(err)] = (160, 160, 160)
    return rgb.astype(np.uint8), top


def write_map_png(
    path: Path,
    maps: Sequence[MapGeo],
    true_lat: np.ndarray,
    true_lon: np.ndarray,
    est_lat: np.ndarray,
    est_lon: np.ndarray,
    error_m: np.ndarray,
    *,
    order: np.ndarray | None = None,
    seq: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    size: int = CANVAS_PX,
) -> Path:
    """Draw ``map.png`` (see the module docstring); ``order`` = frame rows in flight order for the lines."""
    lats = (true_lat, est_lat) + ((seq[0],) if seq is not None else ())
    lons = (true_lon, est_lon) + ((seq[1],) if seq is not None else ())
    pts_lat = np.concatenate([a[np.isfinite(a)] for a in lats])
    pts_lon = np.concatenate([a[np.isfinite(a)] for a in lons])
    bounds = map_bounds_wgs84(maps)
    lat_lo, lat_hi = (bounds[0], bounds[1]) if bounds else (pts_lat.min(), pts_lat.max())
    lon_lo, lon_hi = (bounds[2], bounds[3]) if bounds else (pts_lon.min(), pts_lon.max())
    if pts_lat.size:
        lat_lo, lat_hi = min(lat_lo, pts_lat.min()), max(lat_hi, pts_lat.max())
        lon_lo, lon_hi = min(lon_lo, pts_lon.min()), max(lon_hi, pts_lon.max())
    cos0 = math.cos(math.radians((lat_lo + lat_hi) / 2))
    span_x = max((lon_hi - lon_lo) * cos0, 1e-9)
    span_y = max(lat_hi - lat_lo, 1e-9)
    scale = size / max(span_x, span_y)
    w_px, h_px = max(1, int(round(span_x * scale))), max(1, int(round(span_y * scale)))
    canvas = np.full((h_px, w_px, 3), 40, dtype=np.uint8)

    # Canvas pixel centres in lat/lon.
    cols = lon_lo + (np.arange(w_px) + 0.5) / scale / cos0
    rows = lat_hi - (np.arange(h_px) + 0.5) / scale
    grid_lon, grid_lat = np.meshgrid(cols, rows)
    for m in maps:
        try:
            ds = _open(m.path)
        except Exception:  # noqa: BLE001 - a map that cannot be read is left out of the picture
            continue
        with ds:
            c, r = m.lonlat_to_pixel(grid_lon.ravel(), grid_lat.ravel())
            c, r = np.asarray(c), np.asarray(r)
            inside = (c >= 0) & (c < ds.width) & (r >= 0) & (r < ds.height)
            if not inside.any():
                continue
            # Decimated read at about the canvas's resolution (overviews when the file has them).
            factor = max(1.0, max(ds.width / w_px, ds.height / h_px) / 2)
            out_h, out_w = max(1, int(ds.height / factor)), max(1, int(ds.width / factor))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            small = ds.read(bands, out_shape=(3, out_h, out_w))
            if small.dtype != np.uint8:
                lo, hi = np.percentile(small, [1, 99])
                small = np.clip((small - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
            rr = np.clip((r[inside] * out_h / ds.height).astype(np.int64), 0, out_h - 1)
            cc = np.clip((c[inside] * out_w / ds.width).astype(np.int64), 0, out_w - 1)
            flat = canvas.reshape(-1, 3)
            flat[np.flatnonzero(inside)] = small[:, rr, cc].T

    img = Image.fromarray(canvas, "RGB")
    margin_top = 28
    out = Image.new("RGB", (w_px, h_px + margin_top + 30), (255, 255, 255))
    out.paste(img, (0, margin_top))
    draw = ImageDraw.Draw(out)

    def xy(lat: np.ndarray, lon: np.ndarray) -> list[tuple[float, float]]:
        return [
            (float((lo - lon_lo) * cos0 * scale), float((lat_hi - la) * scale + margin_top))
            for la, lo in zip(lat, lon)
            if math.isfinite(la) and math.isfinite(lo)
        ]

    idx = np.arange(true_lat.size) if order is None else np.asarray(order)
    line = xy(true_lat[idx], true_lon[idx])
    if len(line) > 1:
        draw.line(line, fill=(255, 255, 255), width=3)
    if seq is not None:
        sline = xy(seq[0][idx], seq[1][idx])
        if len(sline) > 1:
            draw.line(sline, fill=(0, 220, 255), width=2)
    colours, top = _error_colours(np.asarray(error_m, dtype=np.float64))
    for i in idx:
        p = xy(est_lat[i : i + 1], est_lon[i : i + 1])
        if p:
            x, y = p[0]
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=tuple(int(v) for v in colours[i]), outline=(0, 0, 0))
    font = ImageFont.load_default()
    draw.text((6, 8), title, fill=(0, 0, 0), font=font)
    legend_y = h_px + margin_top + 8
    draw.text((6, legend_y), "white: true track   cyan: smoothed   dots: per-frame estimate, error", fill=(0, 0, 0), font=font)
    bar_x = max(6, w_px - 260)
    for k in range(200):
        t = k / 199
        col = (int(20 + 230 * min(1, 2 * t)), int(20 + 230 * min(1, 2 * (1 - t))), 20)
        draw.line([(bar_x + k, legend_y), (bar_x + k, legend_y + 10)], fill=col)
    draw.text((bar_x + 204, legend_y), f"0-{top:.0f} m", fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return path


def crop_tile(maps: Sequence[MapGeo], footprint: np.ndarray, size: int) -> Image.Image | None:
    """The map window under one tile's footprint ([4, 2] lat/lon), read at about ``size`` px; None if none."""
    if not np.isfinite(footprint).all():
        return None
    for m in maps:
        c, r = m.lonlat_to_pixel(footprint[:, 1], footprint[:, 0])
        c, r = np.asarray(c), np.asarray(r)
        if not (np.isfinite(c).all() and np.isfinite(r).all()):
            continue
        try:
            ds = _open(m.path)
        except Exception:  # noqa: BLE001 - a map that cannot be read shows no crop
            continue
        with ds:
            c0, c1 = int(math.floor(np.min(c))), int(math.ceil(np.max(c)))
            r0, r1 = int(math.floor(np.min(r))), int(math.ceil(np.max(r)))
            if c1 <= 0 or r1 <= 0 or c0 >= ds.width or r0 >= ds.height:
                continue
            from rasterio.windows import Window

            win = Window(c0, r0, max(1, c1 - c0), max(1, r1 - r0))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            arr = ds.read(bands, window=win, out_shape=(3, size, size), boundless=True, fill_value=0)
            if arr.dtype != np.uint8:
                lo, hi = np.percentile(arr, [1, 99])
                arr = np.clip((arr - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
            return Image.fromarray(np.transpose(arr, (1, 2, 0)), "RGB")
    return None
