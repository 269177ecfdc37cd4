"""protocol=vpr equals VPR-methods-evaluation's recall code, re-implemented here from its definition
(positives within 25 m of UTM east/north, inclusive; top-max(N) predictions; a query counts for R@N
when any of its first N predictions is a positive; queries without positives count in the denominator),
on data whose 25 m neighbourhoods overlap, ranking by L2 on raw descriptors and by cosine."""

from __future__ import annotations

import numpy as np
import pytest
from cvgl.datasets.vpr_positions import (
    PointPositions,
    at_name_position,
    positions_from_names,
    radius_positives,
)
from cvgl.retrieve.metrics import evaluate, evaluate_streaming, iter_array_chunks

RECALL_VALUES = (1, 5, 10, 20)


def reference_recalls(q, g, q_utm, g_utm, *, cosine: bool, radius=25.0):
    """Independent reimplementation: brute-force distances, a full argsort, the per-query loop."""
    d_pos = np.sqrt(((q_utm[:, None, :] - g_utm[None, :, :]) ** 2).sum(-1))
    positives = [np.flatnonzero(row <= radius) for row in d_pos]
    if cosine:
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        order = np.argsort(-(qn.astype(np.float64) @ gn.T.astype(np.float64)), axis=1, kind="stable")
    else:
        d = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
        order = np.argsort(d, axis=1, kind="stable")
    predictions = order[:, : max(RECALL_VALUES)]
    recalls = np.zeros(len(RECALL_VALUES))
    for qi, preds in enumerate(predictions):
        for i, n in enumerate(RECALL_VALUES):
            if np.any(np.isin(preds[:n], positives[qi])):
                recalls[i:] += 1
                break
    return recalls / len(q) * 100, positives


def _world(seed: int, n_g=300, n_q=80, dim=16):
    rng = np.random.default_rng(seed)
    # Gallery on a 10 m street grid with jitter: every 25 m disc holds several items, discs overlap.
    g_utm = np.stack([rng.integers(0, 20, n_g) * 10.0, rng.integers(0, 15, n_g) * 10.0], 1)
    g_utm += rng.normal(0, 2.0, g_utm.shape) + [550_000.0, 4_180_000.0]
    q_utm = g_utm[rng.integers(0, n_g, n_q)] + rng.normal(0, 12.0, (n_q, 2))
    q_utm[:5] += 5_000.0  # five queries far away: no positive within 25 m
    # Descriptors follow the positions (so recall is neither 0 nor 100) and are not normalized.
    basis = rng.normal(size=(2, dim))
    g = ((g_utm - g_utm.mean(0)) / 40.0) @ basis + rng.normal(0, 0.6, (n_g, dim))
    q = ((q_utm - g_utm.mean(0)) / 40.0) @ basis + rng.normal(0, 0.6, (n_q, dim))
    g *= rng.uniform(0.3, 3.0, (n_g, 1))  # norms differ: cosine and L2 rank differently
    return q.astype(np.float32), g.astype(np.float32), q_utm, g_utm


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_vpr_recalls_equal_the_reference(seed, metric):
    q, g, q_utm, g_utm = _world(seed)
    want, ref_pos = reference_recalls(q, g, q_utm, g_utm, cosine=metric == "cosine")
    positives = radius_positives(PointPositions("utm", q_utm), PointPositions("utm", g_utm), 25.0)
    assert all(np.array_equal(a, b) for a, b in zip(positives, ref_pos))
    assert sum(len(p) > 1 for p in positives) > 40  # overlapping neighbourhoods: many positives each
    if metric == "cosine":
        qx = q / np.linalg.norm(q, axis=1, keepdims=True)
        gx = g / np.linalg.norm(g, axis=1, keepdims=True)
        kw = {"metric": "ip"}
    else:
        qx, gx, kw = q, g, {"metric": "l2"}
    got, res = evaluate(qx, None, gx, None, "vpr", ks=RECALL_VALUES, topk=20, positives=positives, **kw)
    assert [got[f"R@{n}"] for n in RECALL_VALUES] == pytest.approx(list(want), abs=1e-9)
    assert 0 < got["R@1"] < got["R@20"] < 100
    assert "AP" not in got and "R@1%" not in got
    assert (res.first_rank[:5] == -1).all()  # no positive within 25 m: counted, never found
    # Streamed in chunks (two passes) gives the same numbers.
    got2, _ = evaluate_streaming(
        qx, None, iter_array_chunks(gx, None, 37), "vpr", ks=RECALL_VALUES, topk=20, positives=positives, **kw
    )
    assert [got2[f"R@{n}"] for n in RECALL_VALUES] == pytest.approx(list(want), abs=1e-9)


def test_l2_differs_from_cosine_on_unnormalized_rows():
    q, g, q_utm, g_utm = _world(3)
    positives = radius_positives(PointPositions("utm", q_utm), PointPositions("utm", g_utm), 25.0)
    _, a = evaluate(q, None, g, None, "vpr", ks=(1,), topk=20, positives=positives, metric="l2")
    _, b = evaluate(q, None, g, None, "vpr", ks=(1,), topk=20, positives=positives, metric="ip")
    assert not np.array_equal(a.topk, b.topk)
    # l2's top-1 is the nearest row in Euclidean distance.
    d = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    assert (d[np.arange(len(q)), a.topk[:, 0]] <= d.min(1) + 1e-4).all()


def test_at_names_give_utm_and_latlon():
    name = "database/@0543256.96@4178906.83@10@S@037.75555@-122.50012@abc@@@@@@201411@@.jpg"
    assert at_name_position(name) == pytest.approx((543256.96, 4178906.83, 37.75555, -122.50012))
    pos = positions_from_names([name, "q/@1@2@.jpg"])
    assert pos is not None and pos.kind == "utm" and pos.latlon is None
    assert positions_from_names(["plain.jpg"]) is None


def test_latlon_radius_is_great_circle():
    lat0, lon0 = 37.0, -122.0
    metre = 1 / 111_320.0  # about one metre of latitude in degrees
    g = PointPositions(
        "latlon", np.array([[lat0 + 24 * metre, lon0], [lat0 + 26.5 * metre, lon0], [lat0, lon0]])
    )
    pos = radius_positives(PointPositions("latlon", np.array([[lat0, lon0]])), g, 25.0)
    assert pos[0].tolist() == [0, 2]


def test_vpr_reads_an_entrys_positions_h5(tmp_path):
    """The one reader joins the positions.h5 kept with an entry (map tiles, frames) for radius positives."""
    from types import SimpleNamespace

    from cvgl.configs.schema import load_config
    from cvgl.datasets.positions import Positions, write_positions
    from cvgl.retrieve.geo import entry_positions_of

    names = ["a.jpg", "b.jpg"]
    nan = np.full(2, np.nan)
    p = Positions(
        names=names,
        lat=np.array([45.0, 45.001]),
        lon=np.array([7.0, 7.0]),
        footprint=np.full((2, 4, 2), np.nan),
        time=nan,
        height=nan,
        yaw=nan,
        sequence=["", ""],
    )
    info = write_positions(p, tmp_path)["positions"]
    entry = SimpleNamespace(
        key="k", label="e", manifest=SimpleNamespace(extra={"positions": info}, parents=[])
    )
    store = SimpleNamespace(entry_dir=lambda key: tmp_path)
    got = entry_positions_of(load_config(None, ["protocol=vpr"]), store, entry, names[::-1], "gallery")
    assert got.kind == "latlon" and got.xy.tolist() == [[45.001, 7.0], [45.0, 7.0]]
