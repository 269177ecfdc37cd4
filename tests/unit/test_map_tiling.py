"""Tiling georeferenced maps: grid, centres and footprints in WGS84, nodata, reading, keys, bad maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pyproj")

from pyproj import Geod, Transformer  # noqa: E402

from cvgl.configs.schema import DatasetConfig, TilesConfig  # noqa: E402
from cvgl.core.errors import UserError  # noqa: E402
from cvgl.datasets.map_layouts import map_image_lists  # noqa: E402
from cvgl.datasets.maps import open_map, tile_maps, tile_of_positions, tiling_params  # noqa: E402
from tests.geotiffs import texture, utm_map, wgs84_map, write_geotiff  # noqa: E402

GEOD = Geod(ellps="WGS84")


def _dist(lat1, lon1, lat2, lon2):
    return GEOD.inv(lon1, lat1, lon2, lat2)[2]


def test_utm_tiles_match_an_independent_grid_and_projection(tmp_path):
    path = utm_map(tmp_path / "utm.tif", h=600, w=800, res=0.5)
    tiles = tile_maps([open_map(path, "utm")], tiling_params(50.0, 30.0, [1, 2], 32))
    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    expected = []
    for scale in (1, 2):
        w = round(50 * scale / 0.5)
        step = round(30 * scale / 0.5)
        for r in range((600 - w) // step + 1):
            for c in range((800 - w) // step + 1):
                x0, y0 = 500000 + c * step * 0.5, 3400000 - r * step * 0.5
                side = w * 0.5
                corners = [(x0, y0), (x0 + side, y0), (x0 + side, y0 - side), (x0, y0 - side)]
                centre = to_ll.transform(x0 + side / 2, y0 - side / 2)
                fp = [to_ll.transform(x, y)[::-1] for x, y in corners]
                expected.append((f"utm/x{scale}/r{r:04d}_c{c:04d}", centre[1], centre[0], fp))
    assert tiles.names == [e[0] for e in expected]
    p = tiles.positions
    np.testing.assert_allclose(p.lat, [e[1] for e in expected], atol=1e-9)
    np.testing.assert_allclose(p.lon, [e[2] for e in expected], atol=1e-9)
    np.testing.assert_allclose(p.footprint, [e[3] for e in expected], atol=1e-9)
    # In metres on the ellipsoid: sides of 50 m (UTM's scale factor near its meridian is 0.9996).
    i = 0
    lt, rt, rb = p.footprint[i, 0], p.footprint[i, 1], p.footprint[i, 2]
    assert _dist(*lt, *rt) == pytest.approx(50.0, rel=2e-3)
    assert _dist(*rt, *rb) == pytest.approx(50.0, rel=2e-3)
    assert _dist(p.lat[0], p.lon[0], p.lat[1], p.lon[1]) == pytest.approx(30.0, rel=2e-3)
    assert all(s == "" for s in p.sequence) and np.isnan(p.time).all()


def test_geographic_map_converts_degrees_to_metres_at_its_centre_latitude(tmp_path):
    deg = 5e-6
    path = wgs84_map(tmp_path / "geo.tif", h=500, w=600, deg=deg)
    m = open_map(path, "geo")
    centre_lat = 30.5 - 250 * deg
    # Independent: the geodesic length of one pixel step at the centre.
    assert m.mpp_x == pytest.approx(_dist(centre_lat, 116.5, centre_lat, 116.5 + deg), rel=1e-4)
    assert m.mpp_y == pytest.approx(_dist(centre_lat, 116.5, centre_lat - deg, 116.5), rel=1e-4)
    tiles = tile_maps([m], tiling_params(40.0, 40.0, [1], 16))
    w = round(40 / m.mpp_x)
    h = round(40 / m.mpp_y)
    assert len(tiles.names) == ((600 - w) // w + 1) * ((500 - h) // h + 1)
    p = tiles.positions
    assert p.lat[0] == pytest.approx(30.5 - h / 2 * deg, abs=1e-12)
    assert p.lon[0] == pytest.approx(116.5 + w / 2 * deg, abs=1e-12)
    lt, rt, rb = p.footprint[0, 0], p.footprint[0, 1], p.footprint[0, 2]
    assert _dist(*lt, *rt) == pytest.approx(40.0, abs=m.mpp_x)
    assert _dist(*rt, *rb) == pytest.approx(40.0, abs=m.mpp_y)


def test_tile_pixels_are_the_maps_window(tmp_path):
    data = texture(300, 400, seed=3)
    path = utm_map(tmp_path / "m.tif", data=data, res=1.0)
    tiles = tile_maps([open_map(path, "m")], tiling_params(100.0, 50.0, [1], 100))
    for i in (0, 3, len(tiles.names) - 1):
        c0, r0, w, h = tiles.source.windows[i]
        got = tiles.source.read_array(i)
        assert got.shape == (100, 100, 3)
        np.testing.assert_array_equal(got, data[:, r0 : r0 + h, c0 : c0 + w].transpose(1, 2, 0))
    assert tiles.source.read_array(0).shape == (100, 100, 3)
    small = tile_maps([open_map(path, "m")], tiling_params(100.0, 50.0, [1], 24))
    assert small.source.read_array(1).shape == (24, 24, 3)


def test_all_nodata_tiles_are_skipped_and_an_all_nodata_map_refused(tmp_path):
    data = texture(400, 400, seed=4)
    data[data == 0] = 1
    data[:, :200, :200] = 0  # the top-left quarter is nodata
    data[:, 150, 150] = 9  # one valid pixel in it
    path = utm_map(tmp_path / "nd.tif", data=data, res=1.0, nodata=0)
    tiles = tile_maps([open_map(path, "nd")], tiling_params(100.0, 100.0, [1], 16))
    kept = set(tiles.names)
    # Tiles wholly inside the nodata quarter go, except the one holding the valid pixel.
    assert "nd/x1/r0000_c0000" not in kept and "nd/x1/r0000_c0001" not in kept
    assert "nd/x1/r0001_c0000" not in kept
    assert "nd/x1/r0001_c0001" in kept
    assert "nd/x1/r0000_c0002" in kept and "nd/x1/r0003_c0003" in kept
    assert len(kept) == 16 - 3
    empty = np.zeros((3, 300, 300), dtype=np.uint8)
    bad = utm_map(tmp_path / "empty.tif", data=empty, res=1.0, nodata=0)
    with pytest.raises(UserError, match="all nodata"):
        tile_maps([open_map(bad, "empty")], tiling_params(100.0, 100.0, [1], 16))


def test_the_nodata_check_is_remembered_per_map_content_and_grid(tmp_path, monkeypatch):
    import cvgl.datasets.maps as maps

    data = texture(300, 300, seed=6)
    data[data == 0] = 1
    data[:, :100, :100] = 0
    path = utm_map(tmp_path / "nd.tif", data=data, res=1.0, nodata=0)
    masks = tmp_path / "masks"
    first = tile_maps([open_map(path, "nd")], tiling_params(100.0, 100.0, [1], 16), masks_dir=masks)
    assert len(first.names) == 8 and len(list(masks.iterdir())) == 1

    def no_pass(*a, **k):
        raise AssertionError("the mask was read again")

    monkeypatch.setattr(maps, "_valid_windows", no_pass)
    again = tile_maps([open_map(path, "nd")], tiling_params(100.0, 100.0, [1], 16), masks_dir=masks)
    assert again.names == first.names
    with pytest.raises(AssertionError, match="read again"):  # another grid: its own pass
        tile_maps([open_map(path, "nd")], tiling_params(100.0, 50.0, [1], 16), masks_dir=masks)


def test_maps_in_different_crss_are_tiled_together(tmp_path):
    a = open_map(utm_map(tmp_path / "a.tif", res=1.0), "a")
    b = open_map(wgs84_map(tmp_path / "b.tif"), "b")
    tiles = tile_maps([a, b], tiling_params(60.0, 60.0, [1], 16))
    assert any(n.startswith("a/") for n in tiles.names) and any(n.startswith("b/") for n in tiles.names)
    assert np.all(np.abs(tiles.positions.lat - 30.5) < 1.0)
    rows = tile_of_positions(tiles, tiles.positions.lat, tiles.positions.lon)
    np.testing.assert_array_equal(rows, np.arange(len(tiles.names)))


def test_corners_georeference_a_plain_tiff(tmp_path):
    path = write_geotiff(tmp_path / "plain.tif", texture(400, 500), crs=None)
    with pytest.raises(UserError, match="no georeference"):
        open_map(path, "plain")
    m = open_map(path, "plain", corners=(30.1, 115.0, 30.1 - 400 * 4e-6, 115.0 + 500 * 5e-6))
    tiles = tile_maps([m], tiling_params(40.0, 20.0, [1], 16))
    c0, r0, w, h = tiles.source.windows[5]
    lat, lon = tiles.positions.lat[5], tiles.positions.lon[5]
    assert lat == pytest.approx(30.1 - (r0 + h / 2) * 4e-6, abs=1e-12)
    assert lon == pytest.approx(115.0 + (c0 + w / 2) * 5e-6, abs=1e-12)


def test_bad_maps_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 10)
    with pytest.raises(UserError, match="cannot open map") as e:
        open_map(junk, "junk")
    assert "\n" not in str(e.value)
    good = utm_map(tmp_path / "whole.tif", h=512, w=512, res=1.0)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated|corrupt"):
        open_map(cut, "cut")
    with pytest.raises(UserError, match="does not exist"):
        open_map(tmp_path / "missing.tif", "missing")
    from affine import Affine
    from rasterio.crs import CRS

    local = CRS.from_wkt('LOCAL_CS["site",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    site = write_geotiff(tmp_path / "site.tif", texture(50, 50), crs=local, transform=Affine(1, 0, 10, 0, -1, 90))
    with pytest.raises(UserError, match="CRS pyproj cannot use"):
        open_map(site, "site")
    m = open_map(good, "whole")
    with pytest.raises(UserError, match="does not fit map"):
        tile_maps([m], tiling_params(600.0, 100.0, [1], 16))
    with pytest.raises(UserError, match="does not fit map"):
        tile_maps([m], tiling_params(300.0, 100.0, [1, 2], 16))
    for size, stride, scales, px, msg in [
        (None, None, [1], 16, "size_m is not set"),
        (-5, None, [1], 16, "positive number"),
        (100, 0, [1], 16, "positive number"),
        (100, None, [], 16, "scales is empty"),
        (100, None, [1, 1], 16, "twice"),
        (100, None, [1], 0, "positive integer"),
    ]:
        with pytest.raises(UserError, match=msg):
            tiling_params(size, stride, scales, px)


def test_gallery_key_covers_the_maps_content_and_the_tiling(tmp_path):
    path = utm_map(tmp_path / "k.tif", res=1.0)
    (tmp_path / "q").mkdir()
    ds = DatasetConfig(layout="map", root=str(tmp_path / "q"), maps=[str(path)], tiles=TilesConfig(size_m=100))
    texture_photo(tmp_path / "q" / "a.png")

    def gallery(d):
        return map_image_lists(d, ["gallery_satellite"])[0]

    first = gallery(ds)
    again = gallery(ds)
    assert first.tiles.digest == again.tiles.digest and first.key_fields == again.key_fields
    other = DatasetConfig(layout="map", root=ds.root, maps=ds.maps, tiles=TilesConfig(size_m=100, px=128))
    assert gallery(other).tiles.digest != first.tiles.digest
    data = texture(600, 800, seed=9)
    utm_map(path, data=data, res=1.0)  # same size and place, other pixels
    assert gallery(ds).tiles.digest != first.tiles.digest


def texture_photo(path, size=32):
    from PIL import Image

    Image.fromarray(texture(size, size, seed=5).transpose(1, 2, 0).copy()).save(path)


def test_metres_per_degree_matches_the_geodesic(tmp_path):
    from cvgl.datasets.maps import metres_per_degree

    for lat in (0.0, 30.0, 60.0):
        m_lat, m_lon = metres_per_degree(lat, 6378137.0, 298.257223563)
        assert m_lon == pytest.approx(_dist(lat, 0.0, lat, 1e-3) * 1e3, rel=1e-6)
        assert m_lat == pytest.approx(_dist(lat - 5e-4, 0.0, lat + 5e-4, 0.0) * 1e3, rel=1e-6)
    assert math.isfinite(metres_per_degree(89.0, 6378137.0, 298.257223563)[1])
