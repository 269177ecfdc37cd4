"""Small real GeoTIFFs and a UAV-VisLoc-layout folder for the map tests (rasterio writes them).

Every map is textured noise with a smooth gradient, so any window of it is distinct; frames are
cut from the maps at known pixels, so their true positions follow from the georeference alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

UTM50 = "EPSG:32650"  # UTM zone 50N (central meridian 117°E), metres
WGS84 = "EPSG:4326"


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[3, h, w]`` noise over a gradient: every window differs from its neighbours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 200 // max(w, 1), yy * 200 // max(h, 1), (xx + yy) * 100 // max(w + h, 1)])
    return (base + rng.integers(0, 55, (3, h, w))).astype(np.uint8)


def write_geotiff(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM50,
    transform=None,
    nodata: float | None = None,
    block: int = 128,
) -> Path:
    """Write ``data`` (``[bands, h, w]``) as a tiled, deflate-compressed GeoTIFF; no crs/transform gives
    a TIFF without georeference."""
    import rasterio

    bands, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": data.dtype.name,
        "compress": "deflate",
    }
    if w >= block and h >= block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.Env(GTIFF_WRITE_TOWGS84="NO"):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
    return path


def utm_map(path: Path, h: int = 600, w: int = 800, res: float = 0.5, seed: int = 0, **kw) -> Path:
    """A map in UTM zone 50N, ``res`` metres per pixel, top-left at (500000 E, 3400000 N)."""
    from affine import Affine

    data = kw.pop("data", None)
    data = texture(h, w, seed) if data is None else data
    return write_geotiff(path, data, crs=UTM50, transform=Affine(res, 0.0, 500000.0, 0.0, -res, 3400000.0), **kw)


def wgs84_map(path: Path, h: int = 500, w: int = 600, deg: float = 5e-6, seed: int = 1, **kw) -> Path:
    """A map in EPSG:4326, ``deg`` degrees per pixel, top-left at 30.5°N 116.5°E."""
    from affine import Affine

    return write_geotiff(path, texture(h, w, seed), crs=WGS84, transform=Affine(deg, 0.0, 116.5, 0.0, -deg, 30.5), **kw)


# UAV-VisLoc-layout folder: per region, the map's pixel size and WGS84 corners (LT lat, LT lon, RB lat, RB lon).
VISLOC_REGIONS = {
    "01": ((400, 500), (30.10, 115.00, 30.10 - 400 * 4e-6, 115.00 + 500 * 5e-6)),
    "07": ((300, 400), (29.50, 114.20, 29.50 - 300 * 4e-6, 114.20 + 400 * 5e-6)),
}
# Region 09 ships in four pieces satellite09_<r>-<c>.tif, each with its own corners.
VISLOC_09_PIECE = (200, 240)
VISLOC_09_ORIGIN = (31.00, 116.00)


def visloc_corners(region: str, piece: tuple[int, int] | None = None) -> tuple[float, float, float, float]:
    if piece is None:
        return VISLOC_REGIONS[region][1]
    (ph, pw), (lat0, lon0) = VISLOC_09_PIECE, VISLOC_09_ORIGIN
    r, c = piece
    lt_lat, lt_lon = lat0 - (r - 1) * ph * 4e-6, lon0 + (c - 1) * pw * 5e-6
    return lt_lat, lt_lon, lt_lat - ph * 4e-6, lt_lon + pw * 5e-6


def pixel_latlon(corners: tuple[float, float, float, float], shape: tuple[int, int], col: float, row: float):
    """lat/lon of a pixel coordinate, linear between the LT and RB corners (UAV-VisLoc's georeference)."""
    lt_lat, lt_lon, rb_lat, rb_lon = corners
    h, w = shape
    return lt_lat + (rb_lat - lt_lat) * row / h, lt_lon + (rb_lon - lt_lon) * col / w


def make_uav_visloc(root: Path, *, frames_per_region: int = 4, frame_px: int = 100, space: bool = True) -> dict:
    """A UAV-VisLoc folder in the real layout: range CSV (with or without the space), regions 01 and 07
    (07's CSV has six columns), region 09 in four pieces; TIFFs without georeference; frames cut from
    the maps. Returns ``{frame name: (lat, lon)}``, the frames' true positions (their centres)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    truth: dict[str, tuple[float, float]] = {}
    ranges = ["mapname,LT_lat_map,LT_lon_map,RB_lat_map,RB_lon_map,region"]
    seed = 10
    maps: list[tuple[str, str, tuple[int, int], tuple, np.ndarray]] = []
    for region, (shape, corners) in VISLOC_REGIONS.items():
        seed += 1
        maps.append((region, f"satellite{region}.tif", shape, corners, texture(*shape, seed=seed)))
    for r in (1, 2):
        for c in (1, 2):
            seed += 1
            maps.append(
                ("09", f"satellite09_{r}-{c}.tif", VISLOC_09_PIECE, visloc_corners("09", (r, c)), texture(*VISLOC_09_PIECE, seed=seed))
            )
    frames: dict[str, list[tuple[str, float, float]]] = {}
    for region, fname, shape, corners, data in maps:
        folder = root / region
        (folder / "drone").mkdir(parents=True, exist_ok=True)
        write_geotiff(folder / fname, data, crs=None, transform=None)
        ranges.append(f"{fname},{corners[0]},{corners[1]},{corners[2]},{corners[3]},{int(region)}")
        h, w = shape
        got = frames.setdefault(region, [])
        if region == "09" and fname != "satellite09_1-1.tif":
            continue  # region 09's frames come from its first piece
        for k in range(frames_per_region):
            c0 = (w - frame_px) * (k + 1) // (frames_per_region + 1)
            r0 = (h - frame_px) * ((k * 7) % (frames_per_region + 1) + 1) // (frames_per_region + 2)
            name = f"{region}_{len(got) + 1:04d}.JPG"
            crop = data[:, r0 : r0 + frame_px, c0 : c0 + frame_px].transpose(1, 2, 0)
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / "drone" / name, quality=95)
            lat, lon = pixel_latlon(corners, shape, c0 + frame_px / 2, r0 + frame_px / 2)
            got.append((name, lat, lon))
            truth[f"{region}/drone/{name}"] = (lat, lon)
    for region, rows in frames.items():
        if region == "07":
            lines = ["num,filename,date,lat,lon,height"]
        else:
            lines = ["num,filename,date,lat,lon,height,Omega,Kappa,Phi1,Phi2"]
        for k, (name, lat, lon) in enumerate(rows, start=1):
            stamp = f"2023-04-0{1 + int(region) % 5}T10:{k:02d}:00"
            row = f"{k},{name},{stamp},{lat!r},{lon!r},{400 + k}"
            if region != "07":
                row += f",0.5,-0.3,{90 + k},{91 + k}"
            lines.append(row)
        (root / region / f"{region}.csv").write_text("\n".join(lines) + "\n")
    name = "satellite_ coordinates_range.csv" if space else "satellite_coordinates_range.csv"
    (root / name).write_text("\n".join(ranges) + "\n")
    return truth
