"""Georeferenced maps as galleries: GeoTIFFs cut into a grid of tiles, read window by window.

A map is a GeoTIFF in any CRS (read with rasterio), or a TIFF with no georeference whose WGS84
corners are known (UAV-VisLoc's coordinate-range CSV): pixel ↔ lat/lon is then linear between the
left-top and right-bottom corners, which is an EPSG:4326 affine transform.

Tiling (``dataset.tiles``): at each scale ``s`` of ``scales`` a tile is ``s × size_m`` metres on a side
and the grid steps by ``s × stride_m`` metres (the same overlap at every scale). Both are converted
to pixels and rounded, separately along x and y, from the map's metres per pixel: the pixel size
times the CRS's linear unit for a projected CRS; for a geographic CRS, degrees → metres on the CRS's
ellipsoid at the map's centre latitude (meridian and parallel radii of curvature). The grid starts at
the map's top-left pixel; only whole tiles are cut, so a strip narrower than one stride at the right
and bottom edges is left out. A tile whose pixels are all nodata (the raster's dataset mask) is
skipped; that check reads the mask strip by strip, never the whole raster at once.

Tiles are never written as image files: a :class:`TileSource` travels with the gallery's
:class:`~cvgl.datasets.layouts.ImageList` and reads tile ``i`` as a rasterio windowed read resampled
to ``px × px`` (``out_shape``, cubic). Each process keeps its own open handles and a bounded GDAL block
cache (:data:`GDAL_CACHE_MB`), so tiling a map larger than memory stays within a fixed budget.

Tile names are ``<map>/x<scale>/r<row>_c<col>`` (grid row and column, from 0), in map order, then
scale order, then row-major. Each tile's centre and footprint (corners lt, rt, rb, lb) in WGS84 go into
the list's :class:`~cvgl.datasets.positions.Positions`.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError
from cvgl.core.keys import DigestMemo, content_key, file_sha256
from cvgl.datasets.positions import Positions

#: GDAL's block cache per process while reading tiles (MB). GDAL's default is 5 % of RAM, which on a
#: large machine lets a long tiling run grow by gigabytes; tiles overlap only their neighbours, so a
#: small cache keeps the blocks that are read again.
GDAL_CACHE_MB = 128
#: Rows of the raster's mask read at once by the nodata check (times the map's width, in bytes).
MASK_STRIP_ROWS = 256
#: The resampling of the windowed reads (part of the gallery's key).
RESAMPLING = "cubic"


@dataclass(frozen=True)
class MapGeo:
    """Where one map's pixels are: size, the affine pixel → CRS transform, the CRS, metres per pixel."""

    path: Path
    name: str  # the map's part of its tiles' names
    width: int
    height: int
    transform: tuple[float, float, float, float, float, float]  # a, b, c, d, e, f (rasterio's Affine)
    crs_wkt: str
    georef: str  # "tiff" (the file's own) or "corners" (LT/RB corners given beside it)
    corners: tuple[float, float, float, float] | None  # LT lat, LT lon, RB lat, RB lon when georef=corners
    mpp_x: float  # metres per pixel along a row
    mpp_y: float  # metres per pixel down a column
    has_mask: bool  # whether any pixel can be nodata (else every tile is kept without reading)

    def pixel_to_crs(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f

    def pixel_to_lonlat(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 (lon, lat) of pixel coordinates (continuous: (0, 0) is the top-left pixel's corner)."""
        x, y = self.pixel_to_crs(np.asarray(col, dtype=np.float64), np.asarray(row, dtype=np.float64))
        return _to_wgs84(self.crs_wkt)(x, y)

    def lonlat_to_pixel(self, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel (col, row) of WGS84 positions."""
        x, y = _from_wgs84(self.crs_wkt)(np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
        a, b, c, d, e, f = self.transform
        det = a * e - b * d
        dx, dy = x - c, y - f
        return (e * dx - b * dy) / det, (-d * dx + a * dy) / det


_TRANSFORMERS: dict[tuple[str, bool], object] = {}


def _transformer(crs_wkt: str, forward: bool):
    from pyproj import CRS, Transformer

    key = (crs_wkt, forward)
    if key not in _TRANSFORMERS:
        src, dst = CRS.from_wkt(crs_wkt), CRS.from_epsg(4326)
        if not forward:
            src, dst = dst, src
        _TRANSFORMERS[key] = Transformer.from_crs(src, dst, always_xy=True)
    return _TRANSFORMERS[key]


def _to_wgs84(crs_wkt: str):
    t = _transformer(crs_wkt, True)
    return lambda x, y: t.transform(x, y)  # type: ignore[attr-defined]


def _from_wgs84(crs_wkt: str):
    t = _transformer(crs_wkt, False)
    return lambda lon, lat: t.transform(lon, lat)  # type: ignore[attr-defined]


def metres_per_degree(lat_deg: float, semi_major: float, inv_flattening: float) -> tuple[float, float]:
    """Metres per degree of latitude and of longitude at ``lat_deg`` on an ellipsoid.

    The meridian radius of curvature ``M = a(1-e²)/(1-e² sin²φ)^1.5`` and the parallel's radius
    ``N cos φ`` with ``N = a/√(1-e² sin²φ)``, times π/180.
    """
    f = 1.0 / inv_flattening if inv_flattening else 0.0
    e2 = f * (2 - f)
    phi = math.radians(lat_deg)
    w = 1.0 - e2 * math.sin(phi) ** 2
    m = semi_major * (1 - e2) / w**1.5
    n = semi_major / math.sqrt(w)
    return m * math.pi / 180.0, n * math.cos(phi) * math.pi / 180.0


def _metres_per_pixel(transform: tuple, crs_wkt: str, width: int, height: int) -> tuple[float, float]:
    from pyproj import CRS

    a, b, c, d, e, f = transform
    crs = CRS.from_wkt(crs_wkt)
    if crs.is_geographic:
        centre_lat = d * width / 2 + e * height / 2 + f
        ell = crs.ellipsoid
        m_lat, m_lon = metres_per_degree(centre_lat, ell.semi_major_metre, ell.inverse_flattening)
        # Axis order: rasterio's transform gives x = longitude, y = latitude.
        return math.hypot(a * m_lon, d * m_lat), math.hypot(b * m_lon, e * m_lat)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return math.hypot(a, d) * unit, math.hypot(b, e) * unit


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _open_raster(path: Path):
    from rasterio.errors import RasterioError

    if not path.is_file():
        raise UserError(f"map {path} does not exist or is not a file; check dataset.maps")
    try:
        return _quiet_open(path)
    except (RasterioError, OSError, ValueError) as e:
        raise UserError(
            f"cannot open map {path} as a raster ({_reason(e)}); it is corrupt or not a GeoTIFF, replace it"
        ) from None


def _quiet_open(path: str | Path):
    """``rasterio.open`` without its warning about a TIFF with no georeference: such a map is refused
    or georeferenced by its corners, one clear message either way."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _check_complete(ds, path: Path) -> None:
    """Refuse a TIFF cut short: every block the header lists must lie inside the file."""
    if ds.driver != "GTiff":
        return
    size = path.stat().st_size
    bands = range(1, ds.count + 1) if ds.interleaving is not None and ds.interleaving.name == "BAND" else [1]
    bh, bw = ds.block_shapes[0]
    ny, nx = math.ceil(ds.height / bh), math.ceil(ds.width / bw)
    for bidx in bands:
        for y in range(ny):
            for x in range(nx):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=bidx)
                n = ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=bidx)
                if off is None or n is None:
                    return  # the driver does not tell: the reads will report a short file
                if int(off) + int(n) > size:
                    raise UserError(
                        f"map {path} is truncated (its block {x},{y} ends at byte {int(off) + int(n)} but the "
                        f"file has {size} bytes); copy it again"
                    )


def _has_georef(ds) -> bool:
    return ds.crs is not None and not ds.transform.is_identity


def require_map_libraries() -> None:
    """Maps are read with rasterio and placed with pyproj, the ``maps`` extra; without them, one line."""
    try:
        import pyproj  # noqa: F401
        import rasterio  # noqa: F401
    except ImportError as e:
        raise UserError(
            f"map layouts need rasterio and pyproj ({e}); install them with "
            "pip install 'cvgl-pipeline[maps]'"
        ) from None


def open_map(path: str | os.PathLike, name: str, corners: Sequence[float] | None = None) -> MapGeo:
    """Read one map's header: size, georeference and metres per pixel (nothing of its pixels).

    ``corners`` (LT lat, LT lon, RB lat, RB lon, WGS84) georeference a TIFF that carries none; the
    TIFF's own georeference wins when it has one.
    """
    require_map_libraries()
    from rasterio.enums import MaskFlags

    p = Path(path)
    with _open_raster(p) as ds:
        _check_complete(ds, p)
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise UserError(f"map {p} holds no pixels; replace it")
        if _has_georef(ds):
            transform = tuple(ds.transform)[:6]
            crs_wkt = ds.crs.to_wkt()
            georef, corner_vals = "tiff", None
        elif corners is not None:
            lt_lat, lt_lon, rb_lat, rb_lon = (float(v) for v in corners)
            _check_corners(p, lt_lat, lt_lon, rb_lat, rb_lon)
            transform = (
                (rb_lon - lt_lon) / ds.width, 0.0, lt_lon,
                0.0, (rb_lat - lt_lat) / ds.height, lt_lat,
            )  # fmt: skip
            from pyproj import CRS

            crs_wkt = CRS.from_epsg(4326).to_wkt()
            georef, corner_vals = "corners", (lt_lat, lt_lon, rb_lat, rb_lon)
        else:
            raise UserError(
                f"map {p} carries no georeference (no CRS and transform) and no corners are given for it; "
                "georeference it (e.g. gdal_translate -a_srs/-a_ullr) or give its corners"
            )
        flags = ds.mask_flag_enums
        has_mask = not all(MaskFlags.all_valid in f for f in flags)
        width, height = ds.width, ds.height
    try:
        mpp_x, mpp_y = _metres_per_pixel(transform, crs_wkt, width, height)
        a, b, c, d, e, f = transform
        lon, lat = _to_wgs84(crs_wkt)(np.array([a * width / 2 + b * height / 2 + c]), np.array([d * width / 2 + e * height / 2 + f]))
        if not (np.isfinite(lon).all() and np.isfinite(lat).all() and abs(float(lat[0])) <= 90):
            raise ValueError("its centre has no WGS84 position")
    except Exception as e:  # noqa: BLE001 - pyproj signals unusable CRSs with several types
        raise UserError(f"map {p} has a CRS pyproj cannot use ({_reason(e)}); reproject it") from None
    if not (mpp_x > 0 and mpp_y > 0 and math.isfinite(mpp_x) and math.isfinite(mpp_y)):
        raise UserError(f"map {p} has a degenerate transform (pixel size {mpp_x} × {mpp_y} m); fix its georeference")
    return MapGeo(
        path=p,
        name=name,
        width=width,
        height=height,
        transform=transform,  # type: ignore[arg-type]
        crs_wkt=crs_wkt,
        georef=georef,
        corners=corner_vals,
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        has_mask=has_mask,
    )


def _check_corners(path: Path, lt_lat: float, lt_lon: float, rb_lat: float, rb_lon: float) -> None:
    vals = (lt_lat, lt_lon, rb_lat, rb_lon)
    if not all(math.isfinite(v) for v in vals) or not (-90 <= lt_lat <= 90 and -90 <= rb_lat <= 90):
        raise UserError(f"corners {list(vals)} of map {path} are not valid latitudes/longitudes; fix them")
    if not (-180 <= lt_lon <= 180 and -180 <= rb_lon <= 180) or lt_lat <= rb_lat or rb_lon <= lt_lon:
        raise UserError(
            f"corners of map {path} (LT {lt_lat}, {lt_lon}; RB {rb_lat}, {rb_lon}) do not span a map: the "
            "left-top corner must lie north-west of the right-bottom one"
        )


# --------------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class TilingParams:
    """``dataset.tiles``, checked."""

    size_m: float
    stride_m: float
    scales: tuple[float, ...]
    px: int

    def spec(self) -> dict:
        return {
            "size_m": self.size_m,
            "stride_m": self.stride_m,
            "scales": list(self.scales),
            "px": self.px,
            "resampling": RESAMPLING,
        }


def tiling_params(size_m: float | None, stride_m: float | None, scales: Sequence[float], px: int) -> TilingParams:
    """Check ``dataset.tiles``; ``stride_m`` defaults to half the tile."""

    def number(name: str, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or float(v) <= 0:
            raise UserError(f"dataset.tiles.{name}={v!r} must be a positive number of metres, e.g. dataset.tiles.{name}=100")
        return float(v)

    if size_m is None:
        raise UserError("dataset.tiles.size_m is not set; give the tile side in metres, e.g. dataset.tiles.size_m=150")
    size = number("size_m", size_m)
    stride = size / 2 if stride_m is None else number("stride_m", stride_m)
    if not scales:
        raise UserError("dataset.tiles.scales is empty; give at least one multiple of size_m, e.g. [1]")
    sc = []
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(float(s)) or float(s) <= 0:
            raise UserError(f"dataset.tiles.scales holds {s!r}; each scale is a positive multiple of size_m, e.g. [1, 1.5]")
        if float(s) in sc:
            raise UserError(f"dataset.tiles.scales holds {s} twice; list each scale once")
        sc.append(float(s))
    if isinstance(px, bool) or not isinstance(px, int) or px < 1:
        raise UserError(f"dataset.tiles.px={px!r} must be a positive integer (pixels), e.g. dataset.tiles.px=256")
    return TilingParams(size, stride, tuple(sc), px)


@dataclass(frozen=True)
class Grid:
    """One map's grid at one scale, in pixels."""

    scale: float
    w: int
    h: int
    step_x: int
    step_y: int
    cols: int
    rows: int

    @property
    def count(self) -> int:
        return self.cols * self.rows


def map_grid(m: MapGeo, params: TilingParams, scale: float) -> Grid:
    """The grid of ``m`` at ``scale``; refuses tiles smaller than a pixel or larger than the map."""
    w = round(params.size_m * scale / m.mpp_x)
    h = round(params.size_m * scale / m.mpp_y)
    sx = round(params.stride_m * scale / m.mpp_x)
    sy = round(params.stride_m * scale / m.mpp_y)
    if w < 1 or h < 1 or sx < 1 or sy < 1:
        raise UserError(
            f"dataset.tiles at scale {scale:g} give tiles of {w} × {h} px and a stride of {sx} × {sy} px on map "
            f"{m.path} ({m.mpp_x:.3g} × {m.mpp_y:.3g} m per pixel); raise dataset.tiles.size_m / stride_m"
        )
    if w > m.width or h > m.height:
        raise UserError(
            f"a tile of {params.size_m * scale:g} m (scale {scale:g}: {w} × {h} px) does not fit map {m.path} "
            f"({m.width} × {m.height} px, about {m.width * m.mpp_x:.0f} × {m.height * m.mpp_y:.0f} m); "
            "lower dataset.tiles.size_m or dataset.tiles.scales"
        )
    return Grid(scale, w, h, sx, sy, (m.width - w) // sx + 1, (m.height - h) // sy + 1)


def _grid_windows(g: Grid) -> np.ndarray:
    """int64 ``[rows*cols, 6]``: col0, row0, w, h, grid row, grid col, row-major."""
    r, c = np.meshgrid(np.arange(g.rows), np.arange(g.cols), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    out = np.empty((r.size, 6), dtype=np.int64)
    out[:, 0] = c * g.step_x
    out[:, 1] = r * g.step_y
    out[:, 2] = g.w
    out[:, 3] = g.h
    out[:, 4] = r
    out[:, 5] = c
    return out


def _valid_windows(m: MapGeo, windows: np.ndarray) -> np.ndarray:
    """bool ``[n]``: whether each window (col0, row0, w, h) holds at least one valid pixel.

    The map's dataset mask is read once, in strips of at most :data:`MASK_STRIP_ROWS` rows, and
    reduced to "any valid pixel" per cell of the grid every window edge cuts the map into; a window's
    answer is then a sum over its cells (2-D prefix sums). Exact, and memory is one strip.
    """
    from rasterio.windows import Window

    if not m.has_mask:
        return np.ones(len(windows), dtype=bool)
    xs = np.unique(np.concatenate([windows[:, 0], windows[:, 0] + windows[:, 2]]))
    ys = np.unique(np.concatenate([windows[:, 1], windows[:, 1] + windows[:, 3]]))
    cells = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    x_end = int(xs[-1])
    with _open_raster(m.path) as ds:
        with _gdal_env():
            for i in range(len(ys) - 1):
                colany = np.zeros(x_end - int(xs[0]), dtype=bool)
                r = int(ys[i])
                while r < int(ys[i + 1]):
                    rh = min(MASK_STRIP_ROWS, int(ys[i + 1]) - r)
                    try:
                        mask = ds.dataset_mask(window=Window(int(xs[0]), r, x_end - int(xs[0]), rh))
                    except Exception as e:  # noqa: BLE001 - GDAL read errors come in several types
                        raise UserError(
                            f"cannot read map {m.path} (rows {r}..{r + rh}: {_reason(e)}); it is corrupt or "
                            "truncated, replace it"
                        ) from None
                    colany |= mask.any(axis=0)
                    r += rh
                cells[i] = np.logical_or.reduceat(colany, (xs[:-1] - xs[0]).astype(np.int64))
    if not cells.any():
        raise UserError(
            f"map {m.path} is all nodata (its mask marks no pixel under any tile as valid); check its nodata "
            "value or mask, or leave it out"
        )
    prefix = np.zeros((cells.shape[0] + 1, cells.shape[1] + 1), dtype=np.int64)
    prefix[1:, 1:] = np.cumsum(np.cumsum(cells, axis=0), axis=1)
    j0 = np.searchsorted(xs, windows[:, 0])
    j1 = np.searchsorted(xs, windows[:, 0] + windows[:, 2])
    i0 = np.searchsorted(ys, windows[:, 1])
    i1 = np.searchsorted(ys, windows[:, 1] + windows[:, 3])
    total = prefix[i1, j1] - prefix[i0, j1] - prefix[i1, j0] + prefix[i0, j0]
    return total > 0


def _valid_windows_memo(m: MapGeo, windows: np.ndarray, digest: str, masks_dir: Path | None) -> np.ndarray:
    """:func:`_valid_windows`, remembered in ``masks_dir`` by the map's content digest and the windows, so
    tiling the same map the same way again skips the pass over its mask (minutes for a large map)."""
    if not m.has_mask or masks_dir is None:
        return _valid_windows(m, windows)
    wins = hashlib.sha256(np.ascontiguousarray(windows, dtype="<i8").tobytes()).hexdigest()
    path = Path(masks_dir) / f"{content_key({'kind': 'tile-mask', 'map': digest, 'windows': wins})}.npy"
    try:
        found = np.load(path, allow_pickle=False)
        if found.dtype == np.bool_ and found.shape == (len(windows),):
            return found
    except (OSError, ValueError):
        pass
    valid = _valid_windows(m, windows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a handle: np.save would append ".npy" to a name
        np.save(fh, valid)
    return valid


def _gdal_env():
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 1024 * 1024)


# --------------------------------------------------------------------------------------------------
# Reading tiles


_HANDLES: dict[tuple[int, str], object] = {}
_ENV: dict[int, object] = {}


def _handle(path: str):
    """This process's open handle on ``path`` (DataLoader workers each open their own), with the band
    indexes to read and how to order them as R, G, B (None when already in that order)."""
    pid = os.getpid()
    if pid not in _ENV:
        env = _gdal_env()
        env.__enter__()  # kept for the process's life: every read uses the bounded block cache
        _ENV[pid] = env
    key = (pid, path)
    found = _HANDLES.get(key)
    if found is None:
        ds = _quiet_open(path)
        bands = _rgb_bands(ds.count, ds.colorinterp)
        uniq = sorted(set(bands))
        pick = [uniq.index(b) for b in bands]
        found = (ds, uniq, None if pick == list(range(len(uniq))) else pick)
        _HANDLES[key] = found
    return found


def _rgb_bands(count: int, colorinterp: Sequence) -> list[int]:
    """The band indexes read as R, G, B: the bands labelled so, else the first three, else band 1 thrice."""
    names = [getattr(c, "name", str(c)) for c in colorinterp]
    if all(n in names for n in ("red", "green", "blue")):
        return [names.index(n) + 1 for n in ("red", "green", "blue")]
    return [1, 2, 3] if count >= 3 else [1, 1, 1]


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Samples of any dtype as 0..255: 8-bit as is, 16-bit scaled from 0..65535, floats from 0..1."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.rint(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class TileSource:
    """How to read a tile list's pixels: per tile its map and window; picklable (DataLoader workers)."""

    maps: tuple[str, ...]
    map_index: np.ndarray  # int32 [n]
    windows: np.ndarray  # int64 [n, 4]: col0, row0, w, h (pixels of its map)
    px: int
    digest: str  # stands for the image-list digest in the entry's key
    names: tuple[str, ...] = field(default=())
    # Per map: {"path", "name"} and, for a map georeferenced by its corners, "corners" (LT lat, LT lon,
    # RB lat, RB lon); recorded in the gallery entry's manifest (extra.maps) so later stages can open it.
    map_info: tuple[dict, ...] = field(default=())

    def manifest_extra(self) -> dict:
        """The gallery entry's manifest fields: its maps and tile size."""
        return {"maps": [dict(m) for m in self.map_info], "tile_px": self.px}

    def __len__(self) -> int:
        return len(self.map_index)

    def read_bands(self, i: int) -> np.ndarray:
        """Tile ``i`` as uint8 ``[3, px, px]`` (R, G, B planes): one windowed read, resampled to ``px × px``."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        path = self.maps[int(self.map_index[i])]
        c0, r0, w, h = (int(v) for v in self.windows[i])
        try:
            ds, uniq, pick = _handle(path)
            data = ds.read(
                indexes=uniq,
                window=Window(c0, r0, w, h),
                out_shape=(len(uniq), self.px, self.px),
                resampling=getattr(Resampling, RESAMPLING),
            )
        except Exception as e:  # noqa: BLE001 - GDAL read errors come in several types
            name = self.names[i] if self.names else f"#{i}"
            raise UserError(
                f"cannot read tile {name} from map {path} ({_reason(e)}); the map is corrupt or truncated, "
                "replace it"
            ) from None
        return to_uint8(data if pick is None else data[pick])

    def read_array(self, i: int) -> np.ndarray:
        """Tile ``i`` as uint8 ``[px, px, 3]`` RGB."""
        return np.ascontiguousarray(self.read_bands(i).transpose(1, 2, 0))

    def read_rgb(self, i: int):
        """Tile ``i`` as a PIL RGB image (``px × px``), merged from its planes without a transposed copy."""
        from PIL import Image

        planes = self.read_bands(i)
        size = (self.px, self.px)
        return Image.merge("RGB", [Image.frombuffer("L", size, np.ascontiguousarray(b), "raw", "L", 0, 1) for b in planes])


# --------------------------------------------------------------------------------------------------
# The gallery


@dataclass
class MapTiles:
    """A gallery cut from maps: names, positions, the reader, and what the entry's key covers."""

    names: list[str]
    positions: Positions
    source: TileSource
    key_fields: dict
    maps: list[MapGeo]
    grids: list[list[Grid]]  # per map, per scale
    # Per map, per scale: the global row of each grid cell (rows*cols), -1 where the tile was skipped.
    rows: list[list[np.ndarray]]


def map_digest(path: Path, memo: DigestMemo | None) -> str:
    """sha256 of a map's bytes, memoized by (path, size, mtime) in the cache's digest memo."""
    return memo.digest(path) if memo is not None else file_sha256(path)


def tile_maps(
    maps: Sequence[MapGeo],
    params: TilingParams,
    memo: DigestMemo | None = None,
    masks_dir: Path | None = None,
) -> MapTiles:
    """Cut ``maps`` into tiles (see the module docstring); nodata tiles are left out.

    ``memo`` memoizes the maps' content digests; ``masks_dir`` (in the cache) remembers which tiles hold
    valid pixels, per map content and grid.
    """
    names: list[str] = []
    lat: list[np.ndarray] = []
    lon: list[np.ndarray] = []
    fps: list[np.ndarray] = []
    map_index: list[np.ndarray] = []
    windows: list[np.ndarray] = []
    grids: list[list[Grid]] = []
    rows: list[list[np.ndarray]] = []
    key_maps = []
    n_total = 0
    for k, m in enumerate(maps):
        gs = [map_grid(m, params, s) for s in params.scales]
        grids.append(gs)
        wins = [_grid_windows(g) for g in gs]
        allw = np.concatenate(wins)
        digest = map_digest(m.path, memo)
        valid = _valid_windows_memo(m, allw[:, :4], digest, masks_dir)
        start = 0
        rows.append([])
        for g, wn in zip(gs, wins):
            keep = valid[start : start + len(wn)]
            start += len(wn)
            row_of = np.full(len(wn), -1, dtype=np.int64)
            row_of[keep] = n_total + np.arange(int(keep.sum()))
            rows[-1].append(row_of)
            n_total += int(keep.sum())
            kept = wn[keep]
            digits = max(4, len(str(max(g.rows, g.cols))))
            names.extend(
                f"{m.name}/x{g.scale:g}/r{int(r):0{digits}d}_c{int(c):0{digits}d}" for r, c in kept[:, 4:6]
            )
            c0, r0 = kept[:, 0].astype(np.float64), kept[:, 1].astype(np.float64)
            cw, rh = kept[:, 2].astype(np.float64), kept[:, 3].astype(np.float64)
            clon, clat = m.pixel_to_lonlat(c0 + cw / 2, r0 + rh / 2)
            corners_c = np.stack([c0, c0 + cw, c0 + cw, c0], axis=1)
            corners_r = np.stack([r0, r0, r0 + rh, r0 + rh], axis=1)
            flon, flat = m.pixel_to_lonlat(corners_c, corners_r)
            lat.append(np.asarray(clat))
            lon.append(np.asarray(clon))
            fps.append(np.stack([np.asarray(flat), np.asarray(flon)], axis=2))
            map_index.append(np.full(len(kept), k, dtype=np.int32))
            windows.append(kept[:, :4])
        key_maps.append(
            {
                "name": m.name,
                "sha256": digest,
                **({"corners": list(m.corners)} if m.georef == "corners" and m.corners else {}),
            }
        )
    n = len(names)
    if len(set(names)) != n:
        raise UserError("two maps give their tiles the same names; give the maps different file names")
    positions = Positions(
        names=names,
        lat=np.concatenate(lat) if lat else np.zeros(0),
        lon=np.concatenate(lon) if lon else np.zeros(0),
        footprint=np.concatenate(fps) if fps else np.zeros((0, 4, 2)),
        time=np.full(n, np.nan),
        height=np.full(n, np.nan),
        yaw=np.full(n, np.nan),
        sequence=[""] * n,
    )
    key_fields = {"tiles": {"maps": key_maps, **params.spec()}}
    source = TileSource(
        maps=tuple(str(m.path.resolve()) for m in maps),
        map_index=np.concatenate(map_index) if map_index else np.zeros(0, dtype=np.int32),
        windows=np.concatenate(windows) if windows else np.zeros((0, 4), dtype=np.int64),
        px=params.px,
        digest=content_key(key_fields),
        names=tuple(names),
        map_info=tuple(
            {
                "path": str(m.path.resolve()),
                "name": m.name,
                **({"corners": list(m.corners)} if m.georef == "corners" and m.corners else {}),
            }
            for m in maps
        ),
    )
    return MapTiles(names, positions, source, key_fields, list(maps), grids, rows)


def tile_of_positions(tiles: MapTiles, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Per position, the row of the first-scale tile that contains it with the nearest centre; -1 when
    no kept tile does (or the position is unknown). The first map that contains it wins."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    out = np.full(lat.shape[0], -1, dtype=np.int64)
    known = np.isfinite(lat) & np.isfinite(lon)
    for m, gs, rs in zip(tiles.maps, tiles.grids, tiles.rows):
        todo = known & (out < 0)
        if not todo.any():
            break
        g, row_of = gs[0], rs[0]
        try:
            col, row = m.lonlat_to_pixel(lon[todo], lat[todo])
        except Exception:  # noqa: BLE001 - a position the map's CRS cannot hold is outside it
            continue
        col = np.nan_to_num(np.asarray(col, dtype=np.float64), nan=-1e18, posinf=-1e18, neginf=-1e18)
        row = np.nan_to_num(np.asarray(row, dtype=np.float64), nan=-1e18, posinf=-1e18, neginf=-1e18)
        # Every grid cell whose window holds the point: columns c with c·step ≤ col < c·step + w.
        c_hi = np.floor(col / g.step_x)
        r_hi = np.floor(row / g.step_y)
        best = np.full(col.shape[0], -1, dtype=np.int64)
        best_d = np.full(col.shape[0], np.inf)
        for dr in range(-(-g.h // g.step_y) + 1):
            for dc in range(-(-g.w // g.step_x) + 1):
                gr, gc = r_hi - dr, c_hi - dc
                ok = (gr >= 0) & (gr < g.rows) & (gc >= 0) & (gc < g.cols)
                ok &= (col >= gc * g.step_x) & (col < gc * g.step_x + g.w)
                ok &= (row >= gr * g.step_y) & (row < gr * g.step_y + g.h)
                cell = np.where(ok, gr * g.cols + gc, 0).astype(np.int64)
                kept = row_of[cell]
                ok &= kept >= 0
                d = (col - (gc * g.step_x + g.w / 2)) ** 2 + (row - (gr * g.step_y + g.h / 2)) ** 2
                better = ok & (d < best_d)
                best = np.where(better, kept, best)
                best_d = np.where(better, d, best_d)
        out[np.flatnonzero(todo)] = best
    return out


__all__ = [
    "GDAL_CACHE_MB",
    "Grid",
    "MapGeo",
    "MapTiles",
    "TileSource",
    "TilingParams",
    "map_grid",
    "metres_per_degree",
    "open_map",
    "tile_maps",
    "tile_of_positions",
    "tiling_params",
    "to_uint8",
]
