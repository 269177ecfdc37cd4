"""Query photos on maps: positions from a CSV or EXIF GPS, flights and their order, UAV-VisLoc's layout."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pyproj")

from PIL import Image  # noqa: E402

from cvgl.configs.schema import DatasetConfig, TilesConfig  # noqa: E402
from cvgl.core.errors import UserError  # noqa: E402
from cvgl.datasets.map_layouts import map_image_lists  # noqa: E402
from cvgl.datasets.map_queries import exif_position, folder_queries, parse_time  # noqa: E402
from tests.geotiffs import make_uav_visloc, texture, utm_map, visloc_corners  # noqa: E402


def _photo(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(texture(24, 24, seed).transpose(1, 2, 0).copy()).save(path)


def _photos(root, names):
    for k, n in enumerate(names):
        _photo(root / n, seed=k)


def test_csv_positions_by_relative_path_or_bare_name_in_time_order(tmp_path):
    root = tmp_path / "q"
    _photos(root, ["f1/a.jpg", "f1/b.jpg", "f1/c.jpg", "f2/x.jpg", "loose.jpg"])
    csv = tmp_path / "pos.csv"
    csv.write_text(
        "name,lat,lon,time,height,yaw\n"
        "f1/a.jpg,30.1,117.2,2024-05-01T10:00:05,100,10\n"
        "b.jpg,30.2,117.3,2024-05-01T10:00:01,,\n"
        "./f1/c.jpg,30.3,117.4,2024-05-01T10:00:03,120,\n"
        "x.jpg,-30,-117,5,,\n"
        "loose.jpg,,,,,\n"
    )
    p = folder_queries(root, str(csv))
    assert p.names == ["f1/b.jpg", "f1/c.jpg", "f1/a.jpg", "f2/x.jpg", "loose.jpg"]
    assert p.sequence == ["f1", "f1", "f1", "f2", "q"]
    np.testing.assert_allclose(p.lat[:4], [30.2, 30.3, 30.1, -30])
    assert np.isnan(p.lat[4]) and np.isnan(p.footprint).all()
    assert p.time[1] - p.time[0] == 2.0 and p.height[2] == 100 and p.yaw[2] == 10 and np.isnan(p.yaw[0])


def test_photos_missing_from_the_csv_are_kept_without_a_position_and_warned(tmp_path):
    root = tmp_path / "q"
    _photos(root, ["a.jpg", "b.jpg", "c.jpg"])
    csv = tmp_path / "pos.csv"
    csv.write_text("name,lat,lon\nb.jpg,30,117\n")
    with pytest.warns(UserWarning, match="2 of 3 photos have no position"):
        p = folder_queries(root, str(csv))
    assert p.names == ["a.jpg", "b.jpg", "c.jpg"]  # no times: name order
    assert np.isnan(p.lat[0]) and p.lat[1] == 30 and np.isnan(p.lat[2])


@pytest.mark.parametrize(
    "body, msg",
    [
        ("name,lat,lon\nzzz.jpg,30,117\n", "names 1 photo.*not found"),
        ("name,lat,lon\na.jpg,95,117\n", "not a latitude"),
        ("name,lat,lon\na.jpg,30,190\n", "not a longitude"),
        ("name,lat,lon\na.jpg,north,117\n", "not a latitude"),
        ("name,lat,lon\na.jpg,nan,117\n", "not a latitude"),
        ("name,lat,lon,time\na.jpg,30,117,yesterday\n", "neither seconds nor a date-time"),
        ("name,lat,lon,height\na.jpg,30,117,high\n", "height 'high' is not a number"),
        ("name,lat\na.jpg,30\n", "lacks column"),
        ("name,lat,lon\na.jpg,30,117\na.jpg,31,117\n", "second row"),
        ("", "is empty"),
    ],
)
def test_bad_positions_csv_is_one_line(tmp_path, body, msg):
    root = tmp_path / "q"
    _photos(root, ["a.jpg", "b.jpg"])
    csv = tmp_path / "pos.csv"
    csv.write_text(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=msg) as e:
            folder_queries(root, str(csv))
    assert "\n" not in str(e.value)


def _exif_photo(path, lat, lon, when=None, alt=None):
    from PIL.TiffImagePlugin import IFDRational

    im = Image.fromarray(texture(24, 24).transpose(1, 2, 0).copy())
    exif = Image.Exif()

    def dms(v):
        v = abs(v)
        d = int(v)
        m = int((v - d) * 60)
        s = (v - d - m / 60) * 3600
        return (IFDRational(d, 1), IFDRational(m, 1), IFDRational(round(s * 10000), 10000))

    gps = {1: "N" if lat >= 0 else "S", 2: dms(lat), 3: "E" if lon >= 0 else "W", 4: dms(lon)}
    if alt is not None:
        gps[5] = 0
        gps[6] = IFDRational(round(alt * 10), 10)
    exif[0x8825] = gps
    if when:
        exif[0x8769] = {36867: when}
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif)


def test_exif_gps_gives_positions_and_times(tmp_path):
    root = tmp_path / "q"
    _exif_photo(root / "a.jpg", 30.123456, -117.5, "2024:05:01 10:00:09", alt=321.5)
    _exif_photo(root / "b.jpg", -12.5, 45.25, "2024:05:01 10:00:02")
    _photo(root / "c.jpg")  # no EXIF: still located, no position
    lat, lon, t, h, _ = exif_position(root / "a.jpg", "a.jpg")
    assert lat == pytest.approx(30.123456, abs=1e-6) and lon == pytest.approx(-117.5, abs=1e-6)
    assert h == pytest.approx(321.5) and t == parse_time("2024-05-01T10:00:09")
    with pytest.warns(UserWarning, match="1 of 3 photos have no position"):
        p = folder_queries(root, None)
    assert p.names == ["a.jpg", "b.jpg", "c.jpg"]  # c has no time: the folder goes by name
    assert p.lat[1] == pytest.approx(-12.5, abs=1e-6) and np.isnan(p.lat[2])


def test_parse_time_forms():
    base = parse_time("2024-05-01T10:00:00")
    assert parse_time("2024:05:01 10:00:01") == base + 1
    assert parse_time("2024-05-01T10:00:00Z") == base
    assert parse_time("12.5") == 12.5 and math.isnan(parse_time(" "))
    assert parse_time("soon") is None


def test_uav_visloc_layout_as_it_ships(tmp_path):
    truth = make_uav_visloc(tmp_path / "visloc", frames_per_region=3, space=True)
    ds = DatasetConfig(layout="uav_visloc", root=str(tmp_path / "visloc"), tiles=TilesConfig(size_m=40, px=16))
    q, g = map_image_lists(ds, ["query_drone", "gallery_satellite"])
    assert set(q.names) == set(truth)
    assert [s for s in q.positions.sequence] == ["01"] * 3 + ["07"] * 3 + ["09"] * 3
    for n, lat, lon in zip(q.names, q.positions.lat, q.positions.lon):
        assert (lat, lon) == pytest.approx(truth[n], abs=1e-12)
    assert np.isfinite(q.positions.height).all()
    assert np.isnan(q.positions.yaw[3:6]).all() and np.isfinite(q.positions.yaw[:3]).all()  # 07: six columns
    maps = {n.split("/")[0] for n in g.names}
    assert maps == {"satellite01", "satellite07", "satellite09_1-1", "satellite09_1-2", "satellite09_2-1", "satellite09_2-2"}
    # Tiles of a piece of region 09 lie inside that piece's corners.
    lt_lat, lt_lon, rb_lat, rb_lon = visloc_corners("09", (2, 2))
    rows = [i for i, n in enumerate(g.names) if n.startswith("satellite09_2-2/")]
    fp = g.positions.footprint[rows]
    assert (fp[..., 0] <= lt_lat + 1e-12).all() and (fp[..., 0] >= rb_lat - 1e-12).all()
    assert (fp[..., 1] >= lt_lon - 1e-12).all() and (fp[..., 1] <= rb_lon + 1e-12).all()
    # Every frame's label is a first-scale tile that contains it.
    assert (q.labels >= 0).all()
    for i, lab in enumerate(q.labels):
        f = g.positions.footprint[lab]
        assert f[2, 0] <= q.positions.lat[i] <= f[0, 0] and f[0, 1] <= q.positions.lon[i] <= f[1, 1]
    only = DatasetConfig(layout="uav_visloc", root=ds.root, regions=[7], tiles=ds.tiles)
    q7 = map_image_lists(only, ["query_drone"])[0]
    assert {n.split("/")[0] for n in q7.names} == {"07"}


def test_uav_visloc_range_csv_without_the_space_and_its_errors(tmp_path):
    root = tmp_path / "v"
    make_uav_visloc(root, frames_per_region=2, space=False)
    ds = DatasetConfig(layout="uav_visloc", root=str(root), regions=["01"], tiles=TilesConfig(size_m=40, px=16))
    assert len(map_image_lists(ds, ["gallery_satellite"])[0]) > 0
    with pytest.raises(UserError, match="region folder .*05 does not exist"):
        map_image_lists(DatasetConfig(layout="uav_visloc", root=str(root), regions=["05"], tiles=ds.tiles), ["query_drone"])
    (root / "satellite_coordinates_range.csv").unlink()
    with pytest.raises(UserError, match="no georeference"):
        map_image_lists(ds, ["gallery_satellite"])


def test_a_map_beside_the_photos_is_not_a_photo_and_labels_skip_nodata_tiles(tmp_path):
    root = tmp_path / "q"
    _photos(root, ["a.jpg"])
    data = texture(300, 300, seed=7)
    data[data == 0] = 1
    data[:, :100, :100] = 0  # the first 100 m tile is all nodata
    m = utm_map(root / "ortho.tif", data=data, res=1.0, nodata=0)
    csv = tmp_path / "pos.csv"
    from pyproj import Transformer

    # A position at pixel (90, 90): inside tile (0, 0), which is skipped, and inside tile (1, 1) (50 m stride).
    lon, lat = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(500090.0, 3400000.0 - 90.0)
    csv.write_text(f"name,lat,lon\na.jpg,{lat!r},{lon!r}\n")
    ds = DatasetConfig(layout="map", root=str(root), maps=[str(m)], query_positions=str(csv), tiles=TilesConfig(size_m=100, stride_m=50))
    q, g = map_image_lists(ds, ["query_drone", "gallery_satellite"])
    assert q.names == ("a.jpg",)
    assert "ortho/x1/r0000_c0000" not in g.names
    assert g.names[q.labels[0]] == "ortho/x1/r0001_c0001"


def test_map_layout_refuses_other_views_and_missing_maps(tmp_path):
    root = tmp_path / "q"
    _photos(root, ["a.jpg"])
    m = utm_map(tmp_path / "m.tif", res=1.0)
    ok = DatasetConfig(layout="map", root=str(root), maps=[str(m)], tiles=TilesConfig(size_m=100))
    with pytest.raises(UserError, match="query_drone and gallery_satellite"):
        map_image_lists(ok, ["query_satellite", "gallery_drone"])
    with pytest.raises(UserError, match="needs the maps"):
        map_image_lists(DatasetConfig(layout="map", root=str(root), tiles=ok.tiles), ["gallery_satellite"])
    with pytest.raises(UserError, match="twice"):
        map_image_lists(DatasetConfig(layout="map", root=str(root), maps=[str(m), str(m)], tiles=ok.tiles), ["gallery_satellite"])
