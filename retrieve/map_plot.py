"""``map.png`` and tile crops for ``protocol=map``: the maps read decimated, never in full.

The picture has one panel per flight (up to 16), each an equirectangular canvas (north up, metres
east scaled by the cosine of the centre's latitude) around the flight's true track. For each map under
a panel, the window it covers is read once through rasterio at about the panel's resolution
(``out_shape``: GDAL uses the file's overviews when it has them, and otherwise decimates while
reading), then every panel pixel looks up its nearest map sample through the map's georeference, so
maps in any CRS, several at once, land in the right place.

Drawn on top: the true track (white), the per-frame estimates as dots coloured by their error
(green → yellow → red, saturating at the 95th percentile), and the smoothed track (cyan) when there
is one. Map tiles shown in report.html are windows of the raster read at thumbnail size.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from cvgl.core.atomic import atomic_path
from cvgl.datasets.maps import MapGeo
from PIL import Image, ImageDraw, ImageFont

CANVAS_PX = 1100


def _open(path: str | Path):  # noqa: ANN202 - rasterio dataset
    import rasterio

    return rasterio.open(path)


@contextlib.contextmanager
def _georeferenced_elsewhere() -> Iterator[None]:
    """Silence rasterio's warning about TIFFs without a georeference: a map's georeference comes from its
    :class:`MapGeo` (the TIFF's own, or corners given beside it), and that was checked when it was opened."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


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


def _extent(lat: np.ndarray, lon: np.ndarray, pad_m: float = 150.0) -> tuple[float, float, float, float] | None:
    """(lat_lo, lat_hi, lon_lo, lon_hi) around the finite points, padded by 20 % and at least ``pad_m``."""
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        return None
    la, lo = lat[ok], lon[ok]
    cos0 = max(math.cos(math.radians(float(la.mean()))), 1e-6)
    pad_lat = max(0.2 * float(la.max() - la.min()), pad_m / 111_320.0)
    pad_lon = max(0.2 * float(lo.max() - lo.min()), pad_m / (111_320.0 * cos0))
    return float(la.min()) - pad_lat, float(la.max()) + pad_lat, float(lo.min()) - pad_lon, float(lo.max()) + pad_lon


def _panel(
    maps: Sequence[MapGeo],
    extent: tuple[float, float, float, float],
    size: int,
) -> tuple[Image.Image, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The maps over ``extent`` as an image about ``size`` px on its long side, and lat/lon → pixel."""
    lat_lo, lat_hi, lon_lo, lon_hi = extent
    cos0 = math.cos(math.radians((lat_lo + lat_hi) / 2))
    span_x = max((lon_hi - lon_lo) * cos0, 1e-12)
    span_y = max(lat_hi - lat_lo, 1e-12)
    scale = size / max(span_x, span_y)
    w_px, h_px = max(1, int(round(span_x * scale))), max(1, int(round(span_y * scale)))
    canvas = np.full((h_px, w_px, 3), 40, dtype=np.uint8)
    # Canvas pixel centres in lat/lon; each looks up its nearest sample of a decimated window read.
    cols = lon_lo + (np.arange(w_px) + 0.5) / scale / cos0
    rows = lat_hi - (np.arange(h_px) + 0.5) / scale
    grid_lon, grid_lat = np.meshgrid(cols, rows)
    flat = canvas.reshape(-1, 3)
    for m in maps:
        c, r = m.lonlat_to_pixel(grid_lon.ravel(), grid_lat.ravel())
        c, r = np.asarray(c), np.asarray(r)
        inside = (c >= 0) & (c < m.width) & (r >= 0) & (r < m.height)
        if not inside.any():
            continue
        try:
            with _georeferenced_elsewhere():
                ds = _open(m.path)
        except Exception:  # noqa: BLE001 - a map that cannot be read is left out of the picture
            continue
        with ds, _georeferenced_elsewhere():
            from rasterio.windows import Window

            c0, c1 = int(c[inside].min()), int(c[inside].max()) + 1
            r0, r1 = int(r[inside].min()), int(r[inside].max()) + 1
            # At most twice the canvas's resolution: GDAL decimates while reading (or uses overviews).
            out_w = max(1, min(c1 - c0, 2 * w_px))
            out_h = max(1, min(r1 - r0, 2 * h_px))
            bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
            small = ds.read(bands, window=Window(c0, r0, c1 - c0, r1 - r0), out_shape=(3, out_h, out_w))
            if small.dtype != np.uint8:
                lo, hi = np.percentile(small, [1, 99])
                small = np.clip((small - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
            rr = np.clip(((r[inside] - r0) * out_h / (r1 - r0)).astype(np.int64), 0, out_h - 1)
            cc = np.clip(((c[inside] - c0) * out_w / (c1 - c0)).astype(np.int64), 0, out_w - 1)
            flat[np.flatnonzero(inside)] = small[:, rr, cc].T

    def to_px(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        return np.stack([(lon - lon_lo) * cos0 * scale, (lat_hi - lat) * scale], axis=-1)

    return Image.fromarray(canvas, "RGB"), to_px


def _polyline(
    draw: ImageDraw.ImageDraw,
    to_px: Callable[[np.ndarray, np.ndarray], np.ndarray],
    lat: np.ndarray,
    lon: np.ndarray,
    fill: tuple[int, int, int],
    width: int,
) -> None:
    """A track through the finite positions, in order."""
    ok = np.isfinite(lat) & np.isfinite(lon)
    pts = [tuple(map(float, p)) for p in to_px(lat[ok], lon[ok])]
    if len(pts) > 1:
        draw.line(pts, fill=fill, width=width)


def write_map_png(
    path: Path,
    maps: Sequence[MapGeo],
    true_lat: np.ndarray,
    true_lon: np.ndarray,
    est_lat: np.ndarray,
    est_lon: np.ndarray,
    error_m: np.ndarray,
    *,
    flights: Sequence[np.ndarray] | None = None,
    seq: tuple[np.ndarray, np.ndarray] | None = None,
    title: str = "",
    size: int = CANVAS_PX,
) -> Path:
    """Draw ``map.png`` (see the module docstring): one panel per flight (``flights``: each flight's frame
    rows in flight order; default one flight of every frame), each around its true track (or, without
    truth, its estimates); estimates outside a panel are pinned to its border as hollow dots."""
    flights = [np.arange(true_lat.size)] if flights is None else [np.asarray(f) for f in flights if len(f)]
    flights = flights[:16] or [np.arange(true_lat.size)]  # more flights than panels: the first 16
    n_cols = math.ceil(math.sqrt(len(flights)))
    n_rows = math.ceil(len(flights) / n_cols)
    side = max(200, size // n_cols)
    colours, top = _error_colours(np.asarray(error_m, dtype=np.float64))
    panels = []
    for rows in flights:
        ext = _extent(true_lat[rows], true_lon[rows]) or _extent(est_lat[rows], est_lon[rows])
        if ext is None:
            bounds = map_bounds_wgs84(maps)
            ext = bounds if bounds is not None else (-1.0, 1.0, -1.0, 1.0)
        img, to_px = _panel(maps, ext, side)
        draw = ImageDraw.Draw(img)
        w, h = img.size

        _polyline(draw, to_px, true_lat[rows], true_lon[rows], (255, 255, 255), 3)
        if seq is not None:
            _polyline(draw, to_px, seq[0][rows], seq[1][rows], (0, 220, 255), 2)
        for i in rows:
            if not (math.isfinite(est_lat[i]) and math.isfinite(est_lon[i])):
                continue
            x, y = (float(v) for v in to_px(est_lat[i : i + 1], est_lon[i : i + 1])[0])
            col = tuple(int(v) for v in colours[i])
            if 0 <= x < w and 0 <= y < h:
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=col, outline=(0, 0, 0))
            else:
                x, y = min(max(x, 4), w - 5), min(max(y, 4), h - 5)
                draw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=col, width=2)
        panels.append(img)
    cell_w = max(p.size[0] for p in panels)
    cell_h = max(p.size[1] for p in panels)
    margin_top, margin_bottom = 28, 30
    out = Image.new("RGB", (max(cell_w * n_cols, 420), cell_h * n_rows + margin_top + margin_bottom), (255, 255, 255))
    for k, img in enumerate(panels):
        out.paste(img, ((k % n_cols) * cell_w, margin_top + (k // n_cols) * cell_h))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    draw.text((6, 8), title, fill=(0, 0, 0), font=font)
    legend_y = cell_h * n_rows + margin_top + 8
    draw.text((6, legend_y), "white: true track   cyan: smoothed   dots: estimates by error", fill=(0, 0, 0), font=font)
    bar_x = max(6, out.size[0] - 260)
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
            with _georeferenced_elsewhere():
                ds = _open(m.path)
        except Exception:  # noqa: BLE001 - a map that cannot be read shows no crop
            continue
        with ds, _georeferenced_elsewhere():
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
