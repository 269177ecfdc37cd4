"""Georeferencing end to end: frames cut from a map exactly on the tile grid are located on it within a
few metres by `pipeline run dataset.layout=map protocol=map`, in a projected CRS and in EPSG:4326.

The frames' true positions and the grid's windows are computed here independently of the pipeline
(the affine transform, pyproj for UTM, geodesic metres per pixel for EPSG:4326)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pyproj")

import rasterio  # noqa: E402
from PIL import Image  # noqa: E402
from pyproj import Geod, Transformer  # noqa: E402
from rasterio.enums import Resampling  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from tests.geotiffs import utm_map, wgs84_map  # noqa: E402
from tests.helpers import TINY, cli  # noqa: E402

MODEL = [a for a in TINY if not a.startswith("dataset.")] + ["backbone.layers=[2]", "extract.num_workers=0"]
SIZE_M, STRIDE_M, PX = 100.0, 50.0, 64


def _frames(tmp_path, name, path, to_lonlat, mpp_x, mpp_y):
    """Cut every third grid window as a frame (read like a tile: cubic to PX); write the positions CSV."""
    w, h = round(SIZE_M / mpp_x), round(SIZE_M / mpp_y)
    sx, sy = round(STRIDE_M / mpp_x), round(STRIDE_M / mpp_y)
    folder = tmp_path / f"{name}_photos" / "flight"
    folder.mkdir(parents=True)
    rows = [("name", "lat", "lon")]
    with rasterio.open(path) as ds:
        windows = [
            (c * sx, r * sy) for r in range((ds.height - h) // sy + 1) for c in range((ds.width - w) // sx + 1)
        ][::3]
        for k, (c0, r0) in enumerate(windows):
            data = ds.read([1, 2, 3], window=Window(c0, r0, w, h), out_shape=(3, PX, PX), resampling=Resampling.cubic)
            Image.fromarray(np.ascontiguousarray(data.transpose(1, 2, 0))).save(folder / f"f{k:03d}.png")
            lon, lat = to_lonlat(c0 + w / 2, r0 + h / 2)
            rows.append((f"f{k:03d}.png", repr(float(lat)), repr(float(lon))))
    with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return len(rows) - 1


@pytest.mark.slow
def test_frames_cut_on_the_grid_are_located_within_metres_utm_and_wgs84(tmp_path):
    utm = utm_map(tmp_path / "utm.tif", h=400, w=500, res=1.0, seed=3)
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    n_utm = _frames(tmp_path, "utm", utm, lambda c, r: to_ll.transform(500000 + c, 3400000 - r), 1.0, 1.0)

    deg = 1e-5
    geo = wgs84_map(tmp_path / "geo.tif", h=400, w=500, deg=deg, seed=4)
    g = Geod(ellps="WGS84")
    lat_c, lon_c = 30.5 - 200 * deg, 116.5 + 250 * deg
    mpp_x = g.inv(lon_c, lat_c, lon_c + deg, lat_c)[2]
    mpp_y = g.inv(lon_c, lat_c, lon_c, lat_c - deg)[2]
    n_geo = _frames(tmp_path, "geo", geo, lambda c, r: (116.5 + c * deg, 30.5 - r * deg), mpp_x, mpp_y)

    cache = tmp_path / "cache"
    for name, path, n in (("utm", utm, n_utm), ("geo", geo, n_geo)):
        p = cli(
            "run", "dataset.layout=map", f"dataset.maps=[{path}]", f"root={name}_photos",
            f"dataset.query_positions={name}.csv", f"dataset.tiles.size_m={SIZE_M}",
            f"dataset.tiles.stride_m={STRIDE_M}", f"dataset.tiles.px={PX}", f"preprocess.resize={PX}",
            "align.method=identity", "protocol=map", f"out={name}_run", *MODEL,
            cache=cache, cwd=tmp_path, timeout=900,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        with open(tmp_path / f"{name}_run" / "locations.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == n
        errors = np.array([float(r["error_m"]) for r in rows])
        assert np.all(errors < 3.0), (name, errors)
