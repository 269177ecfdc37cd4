"""`pipeline extract` on maps as a user runs it: map galleries cached by content and tiling, positions
exported as positions.csv, UAV-VisLoc as it ships, and each bad input as one line."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("pyproj")

from PIL import Image  # noqa: E402

from cvgl.cache.store import CacheStore  # noqa: E402
from tests.geotiffs import make_uav_visloc, texture, utm_map, wgs84_map, write_geotiff  # noqa: E402
from tests.helpers import TINY, cli, one_error_line  # noqa: E402

# TINY's model and batching; the map layouts bring their own images.
MODEL = [a for a in TINY if not a.startswith("dataset.")] + ["backbone.layers=[2]", "extract.num_workers=0"]


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _setup_map(tmp_path):
    data = texture(300, 400, seed=2)
    m = utm_map(tmp_path / "map.tif", data=data, res=1.0)
    q = tmp_path / "photos" / "flight1"
    q.mkdir(parents=True)
    for k in range(3):
        crop = data[:, 100 : 180, 40 + 90 * k : 120 + 90 * k].transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(crop)).save(q / f"f{k}.png")
    return m


@pytest.mark.slow
def test_map_gallery_is_cached_by_content_and_tiling_and_exports_positions(tmp_path):
    m = _setup_map(tmp_path)
    (tmp_path / "pos.csv").write_text("name,lat,lon,time\nf0.png,30.7,117.0,3\nf1.png,30.71,117.0,1\n")
    args = [
        "extract", "dataset.layout=map", f"dataset.maps=[{m}]", "root=photos", "dataset.query_positions=pos.csv",
        "dataset.tiles.size_m=100", "dataset.tiles.stride_m=50", "dataset.tiles.scales=[1,2]",
        "dataset.tiles.px=64", *MODEL,
    ]  # fmt: skip
    cache = tmp_path / "c"
    first = cli(*args, cache=cache, cwd=tmp_path, quiet=False)
    assert first.returncode == 0, first.stderr
    assert "1 of 3 photos have no position" in first.stderr  # f2 is missing from pos.csv: kept, warned
    second = cli(*args, cache=cache, cwd=tmp_path, quiet=False)
    assert second.returncode == 0, second.stderr
    said = second.stdout + second.stderr
    assert said.count("reused") == 2 and "computed" not in said
    store = CacheStore(cache)
    assert len(store.keys()) == 2
    out = tmp_path / "export"
    p = cli("cache", "export", "experiment.gallery_satellite@2", "--out", str(out), cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = _read_csv(out / "positions.csv")
    assert rows[0] == "name,lat,lon,lt_lat,lt_lon,rt_lat,rt_lon,rb_lat,rb_lon,lb_lat,lb_lon".split(",")
    names = (out / "names.txt").read_text().splitlines()
    assert [r[0] for r in rows[1:]] == names
    # 100 m tiles every 50 m on a 400 × 300 m map: 7 × 5 at scale 1, then 200 m tiles every 100 m: 3 × 2.
    assert len(names) == 35 + 6 and len(np.load(out / "descriptors.npy")) == 41
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True)
    lon, lat = to_ll.transform(500000 + 50, 3400000 - 50)
    assert float(rows[1][1]) == pytest.approx(lat, abs=1e-9) and float(rows[1][2]) == pytest.approx(lon, abs=1e-9)
    q = tmp_path / "qexport"
    p = cli("cache", "export", "experiment.query_drone@2", "--out", str(q), cache=cache, cwd=tmp_path)
    qrows = _read_csv(q / "positions.csv")
    # f2 has no time, so the flight goes by name; f2 has no position: empty cells.
    assert [r[0] for r in qrows[1:]] == ["flight1/f0.png", "flight1/f1.png", "flight1/f2.png"]
    assert qrows[3][1] == "" and float(qrows[2][1]) == 30.71
    # Re-tiling with another px is a new gallery entry; the photos' entry is reused.
    third = cli(*[a.replace("px=64", "px=32") for a in args], cache=cache, cwd=tmp_path, quiet=False)
    assert third.returncode == 0, third.stderr
    assert (third.stdout + third.stderr).count("computed") == 1 and len(store.keys()) == 3


@pytest.mark.slow
def test_uav_visloc_extracts_and_exports_frame_positions(tmp_path):
    truth = make_uav_visloc(tmp_path / "visloc", frames_per_region=2)
    cache = tmp_path / "c"
    p = cli(
        "extract", "dataset.layout=uav_visloc", "root=visloc", "dataset.tiles.size_m=40", "dataset.tiles.px=32",
        *MODEL, cache=cache, cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert not p.stderr.strip(), p.stderr  # TIFFs without georeference: corners from the CSV, no warning
    out = tmp_path / "q"
    p = cli("cache", "export", "experiment.query_drone@2", "--out", str(out), cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rows = _read_csv(out / "positions.csv")[1:]
    assert {r[0] for r in rows} == set(truth)
    for r in rows:
        assert (float(r[1]), float(r[2])) == pytest.approx(truth[r[0]], abs=1e-12)


def _bad_inputs(tmp_path):
    """(name, overrides) of each bad input; every one must be one error line and leave no entry."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(2):
        Image.fromarray(texture(32, 32, k).transpose(1, 2, 0).copy()).save(photos / f"p{k}.png")
    good = utm_map(tmp_path / "good.tif", h=300, w=300, res=1.0)
    plain = write_geotiff(tmp_path / "plain.tif", texture(200, 200), crs=None)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x07" * 4000)
    big = utm_map(tmp_path / "big.tif", h=512, w=512, res=1.0)
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        empty = utm_map(tmp_path / "empty.tif", data=np.zeros((3, 300, 300), np.uint8), res=1.0, nodata=0)
    (tmp_path / "unmatched.csv").write_text("name,lat,lon\np0.png,30,117\nghost.png,30,117\n")
    (tmp_path / "range.csv").write_text("name,lat,lon\np0.png,91,117\n")
    (tmp_path / "nan.csv").write_text("name,lat,lon\np0.png,abc,117\n")
    other_crs = wgs84_map(tmp_path / "geo.tif")
    base = ["root=photos", "dataset.tiles.size_m=100"]
    return {
        "no georeference, no corners": ([f"dataset.maps=[{plain}]", *base], "no georeference"),
        "corrupt": ([f"dataset.maps=[{corrupt}]", *base], "cannot open map"),
        "truncated": ([f"dataset.maps=[{truncated}]", *base], "truncated"),
        "all nodata": ([f"dataset.maps=[{empty}]", *base], "all nodata"),
        "csv names no photo": (
            [f"dataset.maps=[{good}]", "dataset.query_positions=unmatched.csv", *base],
            "ghost.png",
        ),
        "lat out of range": ([f"dataset.maps=[{good}]", "dataset.query_positions=range.csv", *base], "'91'"),
        "lat not a number": ([f"dataset.maps=[{good}]", "dataset.query_positions=nan.csv", *base], "'abc'"),
        "tile larger than the map": (
            [f"dataset.maps=[{good},{other_crs}]", "root=photos", "dataset.tiles.size_m=400"],
            "does not fit map",
        ),
        "no tile size": ([f"dataset.maps=[{good}]", "root=photos"], "size_m is not set"),
    }


@pytest.mark.slow
def test_each_bad_map_input_is_one_line_and_leaves_no_entry(tmp_path):
    cases = _bad_inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (overrides, needle) in cases.items():
        cache = tmp_path / f"c-{abs(hash(name))}"
        p = cli("extract", "dataset.layout=map", *overrides, *MODEL, cache=cache, cwd=tmp_path)
        line = one_error_line(p)
        assert needle in line, (name, line)
        assert not cache.exists() or CacheStore(cache).keys() == [], name
    after = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("c-") and p.name != "runs")
    assert after == before  # nothing written beside the inputs
