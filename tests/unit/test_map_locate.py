"""protocol=map's pure parts: footprint positives, estimated positions, metrics, against direct computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from cvgl.core.errors import UserError
from cvgl.retrieve.footprints import contains, footprint_positives, tile_radius_m
from cvgl.retrieve.locate import locate, map_metrics, outside_warning, write_locations
from cvgl.retrieve.sequences import flight_order, step_seconds, viterbi

M = 6378137.0 * math.pi / 180.0  # metres per degree of latitude


def grid_tiles(lat0, lon0, n, size_m, stride_m, angle=0.0):
    """Square tiles on a grid (optionally rotated), as (centre lat, centre lon, footprint [n, 4, 2])."""
    c, s = math.cos(angle), math.sin(angle)
    lat, lon, fp = [], [], []
    for r in range(n):
        for q in range(n):
            cx, cy = q * stride_m, -r * stride_m  # metres east, north
            corners = [(-1, 1), (1, 1), (1, -1), (-1, -1)]  # lt rt rb lb
            pts = []
            for dx, dy in corners:
                x, y = dx * size_m / 2, dy * size_m / 2
                x, y = x * c - y * s, x * s + y * c
                pts.append((lat0 + (cy + y) / M, lon0 + (cx + x) / (M * math.cos(math.radians(lat0)))))
            lat.append(lat0 + cy / M)
            lon.append(lon0 + cx / (M * math.cos(math.radians(lat0))))
            fp.append(pts)
    return np.array(lat), np.array(lon), np.array(fp)


def brute_positives(lat, lon, fp):
    """Reference: test every (frame, tile) pair with a ray-casting (even-odd) test in local metres."""
    out = []
    for la, lo in zip(lat, lon):
        hits = []
        for j, quad in enumerate(fp):
            if not (np.isfinite(la) and np.isfinite(lo)):
                break
            xs = [(p[1] - lo) * M * math.cos(math.radians(la)) for p in quad]
            ys = [(p[0] - la) * M for p in quad]
            inside = False
            for a in range(4):
                b = (a + 1) % 4
                if (ys[a] > 0) != (ys[b] > 0):
                    x_cross = xs[a] + (0 - ys[a]) * (xs[b] - xs[a]) / (ys[b] - ys[a])
                    if x_cross > 0:
                        inside = not inside
            if inside:
                hits.append(j)
        out.append(hits)
    return out


@pytest.mark.parametrize("angle", [0.0, 0.4])
def test_footprint_positives_match_brute_force_with_overlaps_and_scales(angle):
    rng = np.random.default_rng(0)
    lat1, lon1, fp1 = grid_tiles(30.0, 120.0, 6, 100.0, 60.0, angle)  # overlapping tiles
    lat2, lon2, fp2 = grid_tiles(30.0, 120.0, 3, 200.0, 120.0, angle)  # a second scale
    fp = np.concatenate([fp1, fp2])
    q_lat = 30.0 + rng.uniform(-450, 80, 300) / M
    q_lon = 120.0 + rng.uniform(-80, 450, 300) / (M * math.cos(math.radians(30.0)))
    q_lat[:3] = np.nan  # unknown positions have no positives
    indptr, tiles = footprint_positives(q_lat, q_lon, fp)
    got = [sorted(tiles[indptr[i] : indptr[i + 1]].tolist()) for i in range(300)]
    assert got == brute_positives(q_lat, q_lon, fp)
    assert sum(len(g) for g in got) > 300  # overlaps really happen: several positives per frame


def test_tile_centre_is_inside_its_tile_and_edges_count():
    lat, lon, fp = grid_tiles(0.0, 0.0, 2, 100.0, 100.0)  # touching tiles
    assert contains(fp, lat, lon).all()
    # The point on the shared edge between tiles 0 and 1 belongs to both.
    edge_lat, edge_lon = lat[0], (lon[0] + lon[1]) / 2
    indptr, tiles = footprint_positives([edge_lat], [edge_lon], fp)
    assert set(tiles.tolist()) == {0, 1}


def test_tile_radius_is_half_diagonal():
    lat, lon, fp = grid_tiles(45.0, 7.0, 1, 100.0, 100.0)
    assert tile_radius_m(fp, lat, lon)[0] == pytest.approx(50 * math.sqrt(2), rel=1e-3)


def test_locate_top1_and_weighted():
    lat = np.array([0.0, 0.001, 0.002])
    lon = np.array([0.0, 0.0, 0.0])
    top = np.array([[1, 0, 2]])
    scores = np.array([[0.9, 0.9, 0.1]])
    la, lo = locate(top, scores, lat, lon, method="top1")
    assert la[0] == 0.001
    la, lo = locate(top, scores, lat, lon, method="weighted", k=2, temperature=0.1)
    assert la[0] == pytest.approx(0.0005, abs=1e-9) and lo[0] == pytest.approx(0.0, abs=1e-12)
    # Weights are the softmax of score / temperature, computed here directly.
    la, _ = locate(top, scores, lat, lon, method="weighted", k=3, temperature=0.5)
    w = np.exp(scores[0] / 0.5) / np.exp(scores[0] / 0.5).sum()
    assert la[0] == pytest.approx(float((w * lat[top[0]]).sum()), abs=1e-7)
    with pytest.raises(UserError, match="retrieve.locate.k"):
        locate(top, scores, lat, lon, method="weighted", k=4)
    with pytest.raises(UserError, match="temperature"):
        locate(top, scores, lat, lon, method="weighted", k=2, temperature=0)


def haversine_ref(a_lat, a_lon, b_lat, b_lon):
    r = 6378137.0
    p1, p2 = math.radians(a_lat), math.radians(b_lat)
    dp, dl = p2 - p1, math.radians(b_lon - a_lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(h))


def test_map_metrics_against_independent_computation():
    rng = np.random.default_rng(1)
    t_lat, t_lon, fp = grid_tiles(10.0, 20.0, 8, 100.0, 50.0)
    n_t = t_lat.size
    n_q = 40
    q_lat = 10.0 + rng.uniform(-340, 0, n_q) / M
    q_lon = 20.0 + rng.uniform(0, 340, n_q) / (M * math.cos(math.radians(10.0)))
    q_lat[0] = np.nan  # no truth: located, not counted
    q_lat[1] = 11.0  # outside every map
    scores = rng.normal(size=(n_q, n_t))
    top = np.argsort(-scores, axis=1)[:, :10]
    top_s = np.take_along_axis(scores, top, 1)
    m, ev = map_metrics(
        top, top_s, t_lat, t_lon, fp, q_lat, q_lon, ks=[1, 5, 10], ma_metres=[50, 100], sdm_scale=5000.0
    )
    assert m["n_outside_maps"] == 1 and m["n_evaluated"] == n_q - 2
    assert math.isnan(ev.error_m[0]) and not ev.counted[1]
    pos = brute_positives(q_lat, q_lon, fp)
    rows = [i for i in range(n_q) if pos[i]]
    assert len(rows) == n_q - 2
    for k in (1, 5, 10):
        expect = 100 * np.mean([any(t in pos[i] for t in top[i, :k]) for i in rows])
        assert m[f"R@{k}"] == pytest.approx(expect)
    err = [haversine_ref(t_lat[top[i, 0]], t_lon[top[i, 0]], q_lat[i], q_lon[i]) for i in rows]
    assert m["dist_m_mean"] == pytest.approx(np.mean(err), rel=1e-9)
    assert m["dist_m_median"] == pytest.approx(np.median(err), rel=1e-9)
    assert m["MA@50m"] == pytest.approx(100 * np.mean(np.array(err) < 50))
    # SDM@5: DenseUAV's formula in degrees.
    sdm = []
    for i in rows:
        d = [math.hypot(t_lon[top[i, j]] - q_lon[i], t_lat[top[i, j]] - q_lat[i]) for j in range(5)]
        w = [1 - j / 5 for j in range(5)]
        sdm.append(sum(wj * math.exp(-5000 * dj) for wj, dj in zip(w, d)) / sum(w))
    assert m["SDM@5"] == pytest.approx(100 * np.mean(sdm), rel=1e-9)
    line = outside_warning(m["n_outside_maps"], m["n_with_truth"])
    assert line.startswith("1 of 39 frames")


def test_locations_csv(tmp_path):
    p = tmp_path / "locations.csv"
    write_locations(
        p, ["a.jpg", "b.jpg"], np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([0.5, 0.25]),
        np.array([12.5, np.nan]), np.array([[0, 1], [1, 0]]), ["t0", "t1"],
        seq=(np.array([1.5, 2.5]), np.array([3.5, 4.5]), np.array([1.0, np.nan])),
    )
    lines = p.read_text().splitlines()
    assert lines[0] == "name,lat,lon,score,error_m,seq_lat,seq_lon,seq_error_m,topk"
    assert lines[1].split(",")[4] == "12.500" and lines[2].split(",")[4] == ""
    assert lines[2].endswith("t1 t0")


# --- Viterbi


def brute_viterbi(lat, lon, scores, dt, v, temp, radius):
    """Reference: enumerate every path; score = emission log-probs minus distance / reach per move,
    moves farther than reach forbidden. Returns (best path, its score)."""
    f, k = lat.shape
    z = scores / temp
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    best, best_path = -np.inf, None
    for path in itertools.product(range(k), repeat=f):
        total = sum(logp[t, path[t]] for t in range(f))
        for t in range(1, f):
            i, j = path[t - 1], path[t]
            d = haversine_ref(lat[t - 1, i], lon[t - 1, i], lat[t, j], lon[t, j])
            reach = v * dt[t - 1] + radius[t - 1, i] + radius[t, j]
            total = total - d / reach if d <= reach else -np.inf
        if total > best:
            best, best_path = total, path
    return best_path, best


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    f, k = 6, 3
    # Candidates scattered within ~300 m; the true track moves ~20 m per step.
    lat = rng.uniform(0, 300, (f, k)) / M
    lon = rng.uniform(0, 300, (f, k)) / M
    track = np.cumsum(rng.normal(0, 15, (f, 2)), 0) + 150
    lat[:, 0], lon[:, 0] = track[:, 0] / M, track[:, 1] / M  # a feasible path always exists
    scores = rng.normal(0, 1, (f, k))
    dt = rng.uniform(0.5, 2.0, f - 1)
    radius = rng.uniform(0, 10, (f, k))
    pick, breaks = viterbi(lat, lon, scores, dt, max_speed=40.0, temperature=0.7, radius=radius)
    ref, ref_score = brute_viterbi(lat, lon, scores, dt, 40.0, 0.7, radius)
    assert ref is not None and not breaks[1:].any()
    # Equal optimum (which of exactly tied paths wins is unspecified): score Viterbi's path the same way.
    z = scores / 0.7
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    got = sum(logp[t, pick[t]] for t in range(f))
    for t in range(1, f):
        i, j = pick[t - 1], pick[t]
        d = haversine_ref(lat[t - 1, i], lon[t - 1, i], lat[t, j], lon[t, j])
        reach = 40.0 * dt[t - 1] + radius[t - 1, i] + radius[t, j]
        assert d <= reach
        got -= d / reach
    assert got == pytest.approx(ref_score, abs=1e-9)


def test_viterbi_breaks_where_nothing_is_reachable():
    lat = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])  # a 111 km jump between frames 0 and 1
    lon = np.array([[0.0, 0.001], [0.0, 0.001], [0.0, 0.001]])
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    pick, breaks = viterbi(lat, lon, scores, np.ones(2), max_speed=10.0, temperature=1.0)
    assert breaks.tolist() == [True, True, False]
    assert pick.tolist() == [0, 1, 1]


def test_viterbi_follows_motion_over_a_wrong_best_score():
    # Frame 1's best-scoring tile is 2 km away; the motion prior picks its second, 10 m from frame 0/2.
    lat = np.array([[0.0, 0.02], [0.02, 10 / M], [0.0, 0.02]])
    lon = np.zeros((3, 2))
    scores = np.array([[1.0, 0.0], [1.0, 0.9], [1.0, 0.0]])
    pick, _ = viterbi(lat, lon, scores, np.ones(2), max_speed=15.0, temperature=0.1)
    assert pick.tolist() == [0, 1, 0]


def test_flight_order_and_steps():
    names = ["b.jpg", "a.jpg", "c.jpg", "x.jpg"]
    order = flight_order(["f1", "f1", "f1", "f2"], np.array([2.0, 3.0, 1.0, np.nan]), names)
    assert [o.tolist() for o in order] == [[2, 0, 1], [3]]
    order = flight_order(["f1", "f1", "f1"], np.array([2.0, np.nan, 1.0]), names[:3])
    assert order[0].tolist() == [1, 0, 2]  # by name when a time is missing
    assert step_seconds(np.array([0.0, np.nan, 3.0]), 1.5, "f").tolist() == [1.5, 1.5]
    with pytest.raises(UserError, match="dataset.frame_interval_s"):
        step_seconds(np.array([0.0, np.nan]), None, "f")


@pytest.mark.parametrize(
    "bad",
    [
        "retrieve.locate.k=0",
        "retrieve.locate.temperature=0",
        "retrieve.locate.max_speed_mps=-3",
        "retrieve.locate.method=median",
        "retrieve.locate.sequence=kalman",
    ],
)
def test_locate_options_are_one_line_errors_when_the_config_loads(bad):
    from cvgl.configs.schema import load_config

    with pytest.raises(UserError, match=bad.split("=")[0].replace(".", r"\.")) as e:
        load_config(None, ["protocol=map", bad])
    assert "\n" not in str(e.value)


def test_r_at_k_beyond_the_gallery_saturates():
    t_lat, t_lon, fp = grid_tiles(0.0, 0.0, 2, 100.0, 100.0)  # 4 tiles
    top = np.array([[3, 2, 1, 0]])
    m, _ = map_metrics(
        top, np.array([[0.9, 0.8, 0.7, 0.6]]), t_lat, t_lon, fp, t_lat[:1], t_lon[:1],
        ks=[1, 10], ma_metres=[5.0], sdm_scale=5000.0,
    )
    assert m["R@1"] == 0.0 and m["R@10"] == 100.0 and "SDM@10" not in m and "SDM@1" in m
