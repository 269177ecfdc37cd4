"""GPS metrics (DenseUAV's SDM@K and MA@m, metres to the top-1), positions files, the DenseUAV layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cvgl.core.errors import UserError
from cvgl.retrieve.geo import geo_metrics, haversine_m, positions_for, read_gps_file
from cvgl.retrieve.metrics import evaluate
from PIL import Image

from tests.helpers import cli, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")


def _slow_latlon_to_m(lat_a: float, lon_a: float, lat_b: float, lon_b: float) -> float:
    """Haversine as DenseUAV's latlog2meter writes it, one pair at a time."""
    la, lb = math.radians(lat_a), math.radians(lat_b)
    a, b = la - lb, math.radians(lon_a) - math.radians(lon_b)
    h = math.sin(a / 2) ** 2 + math.cos(la) * math.cos(lb) * math.sin(b / 2) ** 2
    return 6378.137 * 2 * math.asin(math.sqrt(h)) * 1000


def _slow_geo(q, g, gl, q_pos, g_pos, ks, scale, metres):
    """Sort each query's row (junk dropped), then the definitions term by term."""
    s = q @ g.T
    sdm = {k: 0.0 for k in ks}
    dists = []
    for i in range(len(q)):
        order = sorted((j for j in range(len(g)) if gl[j] != -1), key=lambda j: -s[i, j])
        for k in ks:
            num = den = 0.0
            for r, j in enumerate(order[:k]):
                w = 1 - r / k
                d = math.hypot(g_pos[j][0] - q_pos[i][0], g_pos[j][1] - q_pos[i][1])
                num += w * math.exp(-scale * d)
                den += w
            sdm[k] += num / den
        j = order[0]
        dists.append(_slow_latlon_to_m(q_pos[i][1], q_pos[i][0], g_pos[j][1], g_pos[j][0]))
    out = {f"SDM@{k}": 100 * sdm[k] / len(q) for k in ks}
    out.update({f"MA@{m:g}m": 100 * sum(d < m for d in dists) / len(q) for m in metres})
    out["dist_m_mean"] = sum(dists) / len(dists)
    out["dist_m_median"] = float(np.median(dists))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_geo_metrics_equal_slow_implementation_with_ties_junk_and_distractors(seed):
    rng = np.random.default_rng(seed)
    n_loc, n_q, d = 40, 30, 3
    # Two tiles per location with the same descriptor and position (as DenseUAV's satellites share
    # their location's GPS): exact score ties whose order cannot change any metric.
    loc_desc = rng.normal(size=(n_loc, d)).astype(np.float32)
    loc_pos = np.stack([120 + rng.uniform(0, 2e-3, n_loc), 30 + rng.uniform(0, 2e-3, n_loc)], 1)
    g = np.repeat(loc_desc, 2, 0)
    g_pos = np.repeat(loc_pos, 2, 0)
    gl = np.repeat(np.arange(n_loc), 2)
    gl[rng.choice(2 * n_loc, 10, replace=False)] = -1  # junk: never retrieved
    gl[rng.choice(2 * n_loc, 10, replace=False)] = -2  # distractors: retrieved like any tile
    q = rng.normal(size=(n_q, d)).astype(np.float32)
    q_pos = np.stack([120 + rng.uniform(0, 2e-3, n_q), 30 + rng.uniform(0, 2e-3, n_q)], 1)
    ks, scale, metres = (1, 3, 10), 5000.0, (5, 20, 100, 250)
    want = _slow_geo(q, g, gl, q_pos, g_pos, ks, scale, metres)
    _, res = evaluate(q, rng.integers(0, n_loc, n_q), g, gl, "u1652", ks=ks, topk=10)
    got = geo_metrics(q_pos, g_pos, res.topk, ks, scale=scale, ma_metres=metres)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key
    assert 0 < want["MA@100m"] < 100  # the data exercise both sides of the thresholds


def test_haversine_uses_denseuav_earth_radius():
    # One degree of latitude on a 6,378.137 km sphere.
    assert haversine_m(31.0, 120.0, 30.0, 120.0) == pytest.approx(6378137 * math.pi / 180, rel=1e-12)
    assert haversine_m(30.0, 120.0, 30.0, 120.0) == 0.0


def test_gps_file_is_read_by_location_folder_and_vigor_names_carry_positions(tmp_path):
    gps = tmp_path / "Dense_GPS_ALL.txt"
    gps.write_text(
        "train/drone/000001/H80.JPG E120.1 N30.2 H80.0\n"
        "test/gallery_satellite/002300/H80.tif E120.5 N30.6 H80.0\n\n"
    )
    assert read_gps_file(gps) == {"000001": (120.1, 30.2), "002300": (120.5, 30.6)}
    pos = positions_for(["test/query_drone/002300/H90.JPG"], gps=str(gps), root=None, what="query")
    assert pos.tolist() == [[120.5, 30.6]]
    vig = positions_for(
        ["satellite/Chicago/satellite_41.5_-87.25.png", "ground/Chicago/abc,41.75,-87.5,.jpg"],
        gps=None,
        root=None,
        what="gallery",
    )
    assert vig.tolist() == [[-87.25, 41.5], [-87.5, 41.75]]
    with pytest.raises(UserError, match="positions missing for 1 of 2"):
        positions_for(["a/000001/x.jpg", "a/999999/x.jpg"], gps=str(gps), root=None, what="query")


# --------------------------------------------------------------------------------------------------
# DenseUAV through the command line

TINY = [
    "dataset.layout=denseuav",
    "align.method=identity",
    "preprocess.resize=32",
    "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
    "backbone.layers=[1]",
    "extract.shard_rows=8",
    "extract.batch_size=4",
    "retrieve.report=false",
    "retrieve.geo=true",
    "retrieve.ks=[1,3,5]",  # SDM@K needs K items: the gallery holds 6
]


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path)


def _make_denseuav(root: Path, n_loc: int = 6) -> None:
    lines = []
    for k in range(n_loc):
        loc = f"{2256 + k:06d}"
        for h in ("H80", "H90"):
            _img(root / "test" / "query_drone" / loc / f"{h}.JPG", 10 * k + len(h))
            lines.append(f"test/query_drone/{loc}/{h}.JPG E{120 + k * 1e-4:.8f} N{30 + k * 1e-4:.8f} {h}.0")
        _img(root / "test" / "gallery_satellite" / loc / "H80.tif", 500 + k)
        lines.append(f"test/gallery_satellite/{loc}/H80.tif E{120 + k * 1e-4:.8f} N{30 + k * 1e-4:.8f} H80.0")
    (root / "Dense_GPS_ALL.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_denseuav_run_reports_gps_metrics_and_bad_gps_input_is_one_line(tmp_path):
    root = tmp_path / "DenseUAV"
    _make_denseuav(root)
    cache = tmp_path / "cache"
    p = cli("run", "demo", f"root={root}", *TINY, "out=run", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["n_queries"] == 12 and m["n_gallery"] == 6
    for key in ("SDM@1", "SDM@3", "SDM@5", "MA@5m", "MA@10m", "MA@20m", "MA@50m", "MA@100m"):
        assert 0 <= m[key] <= 100, key
    # A top-1 at the query's own location is 0 m away (the same GPS line), so MA@5m counts R@1's hits.
    assert m["MA@5m"] == pytest.approx(m["R@1"])
    assert m["dist_m_median"] >= 0 and m["SDM@1"] >= m["R@1"] - 1e-9

    gps = root / "Dense_GPS_ALL.txt"
    good = gps.read_text()
    gps.write_text(good.replace(" N30.00010000", " 30.00010000", 1))
    bad = cli("retrieve", "demo", f"root={root}", *TINY, "out=bad1", cache=cache, cwd=tmp_path)
    assert "Dense_GPS_ALL.txt line" in one_error_line(bad)
    assert not (tmp_path / "bad1" / "metrics.json").exists()

    gps.write_text("".join(ln + "\n" for ln in good.splitlines() if "/002258/" not in ln))
    bad = cli("retrieve", "demo", f"root={root}", *TINY, "out=bad2", cache=cache, cwd=tmp_path)
    assert "positions missing for 2 of 12 query images" in one_error_line(bad)
    assert not (tmp_path / "bad2" / "metrics.json").exists()
