"""Exact retrieval metrics against a slow reference written the obvious way (full sort per query)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from cvgl.core.errors import UserError
from cvgl.retrieve.metrics import (
    PROTOCOLS,
    QueryResults,
    count_greater,
    evaluate,
    evaluate_streaming,
    iter_array_chunks,
    summarize,
)

# ----------------------------------------------------------------------------------------------------------
# Reference: one query at a time, full argsort of the score row, as the papers' own scripts do.


def _reference_u1652_query(score, ql, gl, protocol):
    """(first rank, AP, cmc row) for one query, following University-1652's compute_mAP step by step."""
    n = len(score)
    index = np.argsort(score)[::-1]  # high to low
    good = np.argwhere(gl == ql).flatten() if ql != -1 else np.zeros(0, dtype=np.int64)
    junk = np.argwhere(gl == -1).flatten()
    cmc = np.zeros(n, dtype=np.int64)
    if good.size == 0:
        return -1, 0.0, cmc
    index = index[np.isin(index, junk, invert=True)]
    rows_good = np.flatnonzero(np.isin(index, good))
    cmc[rows_good[0] :] = 1
    ngood = len(good)
    ap = 0.0
    for i in range(ngood):
        precision = (i + 1) / (rows_good[i] + 1)
        if protocol == "u1652":
            old_precision = i / rows_good[i] if rows_good[i] != 0 else 1.0
            ap += (1.0 / ngood) * (old_precision + precision) / 2
        else:  # geoalign: plain mean of the precisions at each positive
            ap += precision / ngood
    return int(rows_good[0]), ap, cmc


def reference(q, ql, g, gl, protocol, ks, topk):
    """Metrics dict and per-query arrays, computed slowly in float64."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    n_q, n_g = scores.shape
    first = np.full(n_q, -1, dtype=np.int64)
    ap = np.zeros(n_q)
    tops = np.zeros((n_q, topk), dtype=np.int64)
    out = {"protocol": protocol, "n_queries": n_q, "n_gallery": n_g}
    if protocol == "cvft":
        dist = 2 - 2 * scores
        for i in range(n_q):
            first[i] = int(np.sum(dist[i] < dist[i, i]))
            tops[i] = np.argsort(-scores[i], kind="stable")[:topk]
        for k in ks:
            out[f"R@{k}"] = 100.0 * np.mean(first < k)
        out["R@1%"] = 100.0 * np.mean(first < int(0.01 * n_g))
        return out, first, np.full(n_q, np.nan), tops
    cmc = np.zeros(n_g, dtype=np.int64)
    for i in range(n_q):
        first[i], ap[i], c = _reference_u1652_query(scores[i], ql[i], gl, protocol)
        cmc += c
        order = np.argsort(-scores[i], kind="stable")
        tops[i] = order[gl[order] != -1][:topk]
    for k in ks:
        out[f"R@{k}"] = 100.0 * cmc[min(k, n_g) - 1] / n_q
    out["R@1%"] = 100.0 * cmc[round(n_g * 0.01)] / n_q
    out["AP"] = 100.0 * ap.sum() / n_q
    return out, first, ap, tops


# ----------------------------------------------------------------------------------------------------------
# Data


def _normalize(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _tie_free(q, g, gl, topk, positives, margin=1e-5):
    """True when no score that matters (a positive's, or one in the top K + 1) is within margin of another."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    keep = gl != -1 if gl is not None else np.ones(g.shape[0], dtype=bool)
    for i in range(scores.shape[0]):
        row = scores[i, keep]
        order = np.argsort(-row)
        gaps = -np.diff(row[order])
        important = np.zeros(len(row), dtype=bool)
        important[: topk + 1] = True
        pos = positives(i)[keep]
        important |= pos[order]
        near = important[:-1] | important[1:]
        if np.any(gaps[near] < margin):
            return False
    return True


def make_labelled(seed, n_q=60, n_g=300, d=24, protocol="u1652", topk=10):
    """Class-structured data with junk, distractor classes, positive-less queries and one crowded class."""
    for attempt in range(100):
        rng = np.random.default_rng(seed * 1000 + attempt)
        n_cls, n_distract = 12, 6
        centers = rng.normal(size=(n_cls + n_distract, d))
        gl = rng.integers(0, n_cls + n_distract, size=n_g)
        gl[:40] = 0  # class 0 has >= 40 positives: the many-positives path
        gl[rng.random(n_g) < 0.1] = -1  # junk
        gl[40:43] = 3  # a class with exactly a few positives
        g = centers[np.where(gl >= 0, gl, rng.integers(0, n_cls, size=n_g))] + 0.9 * rng.normal(size=(n_g, d))
        ql = rng.integers(0, n_cls, size=n_q)
        ql[:3] = [1000, 1001, -1]  # labels with no positive in the gallery (and a junk-labelled query)
        ql[3:8] = 0
        q = centers[np.clip(ql, 0, n_cls - 1)] + 0.9 * rng.normal(size=(n_q, d))
        q, g = _normalize(q), _normalize(g)
        perm = rng.permutation(n_g)
        g, gl = g[perm], gl[perm]
        if _tie_free(q, g, gl, topk, lambda i, gl=gl, ql=ql: (gl == ql[i]) & (ql[i] != -1)):
            return q, ql, g, gl
    raise AssertionError("could not draw tie-free data")


def make_pairs(seed, n=250, d=24, topk=10):
    """One-to-one pairs: gallery i is a noisy copy of query i (the cvft protocol)."""
    for attempt in range(100):
        rng = np.random.default_rng(seed * 1000 + attempt)
        q = rng.normal(size=(n, d))
        g = q + 1.1 * rng.normal(size=(n, d))
        q, g = _normalize(q), _normalize(g)
        if _tie_free(q, g, None, topk, lambda i: np.arange(n) == i):
            return q, None, g, None
    raise AssertionError("could not draw tie-free data")


def _data(protocol, seed):
    return make_pairs(seed) if protocol == "cvft" else make_labelled(seed, protocol=protocol)


def _check_against_reference(metrics, res, q, ql, g, gl, protocol, ks=(1, 5, 10), topk=10):
    ref, first, ap, tops = reference(q, ql, g, gl, protocol, ks, topk)
    assert list(metrics) == list(ref)
    for key, value in ref.items():
        if isinstance(value, str):
            assert metrics[key] == value
        else:
            assert isinstance(metrics[key], (int, float))
            assert metrics[key] == pytest.approx(value, abs=1e-6), key
    np.testing.assert_array_equal(res.first_rank, first)
    if protocol == "cvft":
        assert np.isnan(res.ap).all()
    else:
        np.testing.assert_allclose(res.ap, ap, atol=1e-9)
    np.testing.assert_array_equal(res.topk, tops)
    full = q.astype(np.float64) @ g.astype(np.float64).T
    np.testing.assert_allclose(res.topk_scores, np.take_along_axis(full, tops, 1), atol=1e-5)
    assert res.topk.dtype == np.int64 and res.topk_scores.dtype == np.float32
    assert res.first_rank.dtype == np.int64 and res.ap.dtype == np.float64


# ----------------------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_matches_reference(protocol, seed):
    q, ql, g, gl = _data(protocol, seed)
    metrics, res = evaluate(q, ql, g, gl, protocol)
    _check_against_reference(metrics, res, q, ql, g, gl, protocol)
    # The data really exercises what it should.
    if protocol != "cvft":
        assert (res.n_positives == 0).sum() >= 3 and res.n_positives.max() >= 40
        assert 0 < metrics["R@1"] < 100 and 0 < metrics["AP"] < 100
        np.testing.assert_array_equal(res.n_positives, [np.sum((gl == x) & (x != -1)) for x in ql])
    else:
        assert 0 < metrics["R@1"] < 100 and 0 < metrics["R@1%"] < 100


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_streaming_matches_reference(protocol, chunk_rows):
    q, ql, g, gl = _data(protocol, 2)
    metrics, res = evaluate_streaming(q, ql, iter_array_chunks(g, gl, chunk_rows), protocol)
    _check_against_reference(metrics, res, q, ql, g, gl, protocol)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("block_size", [1, 5, 17])
def test_query_blocks_do_not_change_results(protocol, block_size):
    q, ql, g, gl = _data(protocol, 3)
    metrics, res = evaluate(q, ql, g, gl, protocol, block_size=block_size, ks=(1, 3), topk=4)
    _check_against_reference(metrics, res, q, ql, g, gl, protocol, ks=(1, 3), topk=4)
    m2, r2 = evaluate_streaming(
        q, ql, iter_array_chunks(g, gl, 50), protocol, block_size=block_size, ks=(1, 3), topk=4
    )
    _check_against_reference(m2, r2, q, ql, g, gl, protocol, ks=(1, 3), topk=4)


def test_float16_chunks_and_empty_chunks():
    """Cache shards may be float16 and a shard may be empty."""
    q, ql, g, gl = make_labelled(4)
    g16 = g.astype(np.float16)

    def chunks():
        yield g16[:100], gl[:100]
        yield np.zeros((0, g.shape[1]), np.float16), np.zeros(0, np.int64)
        yield g16[100:], gl[100:]

    metrics, res = evaluate_streaming(q, ql, chunks, "u1652")
    ref_metrics, ref_res = evaluate(q, ql, g16.astype(np.float32), gl, "u1652")
    assert metrics == pytest.approx(ref_metrics, abs=1e-6)
    np.testing.assert_array_equal(res.first_rank, ref_res.first_rank)
    np.testing.assert_array_equal(res.topk, ref_res.topk)


def test_unnormalised_descriptors_use_plain_inner_product():
    q, ql, g0, gl = make_labelled(5)
    for seed in range(100):  # rescaled rows: find a draw that stays tie-free
        rng = np.random.default_rng(seed)
        g = (g0 * rng.uniform(0.5, 2.0, size=(g0.shape[0], 1))).astype(np.float32)
        if _tie_free(q, g, gl, 10, lambda i: (gl == ql[i]) & (ql[i] != -1)):
            break
    else:
        raise AssertionError("no tie-free draw")
    metrics, res = evaluate(q, ql, g, gl, "geoalign")
    _check_against_reference(metrics, res, q, ql, g, gl, "geoalign")


def test_torch_inputs_and_ks():
    q, ql, g, gl = make_labelled(6)
    metrics, res = evaluate(
        torch.from_numpy(q),
        torch.from_numpy(ql),
        torch.from_numpy(g),
        torch.from_numpy(gl),
        "u1652",
        ks=(1, 2, 1000),
        topk=3,
    )
    _check_against_reference(metrics, res, q, ql, g, gl, "u1652", ks=(1, 2, 1000), topk=3)
    assert list(metrics) == ["protocol", "n_queries", "n_gallery", "R@1", "R@2", "R@1000", "R@1%", "AP"]
    # R@k past the gallery size saturates at the share of queries that have a positive.
    assert metrics["R@1000"] == pytest.approx(100.0 * np.mean(res.n_positives > 0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_without_cuda_falls_back_to_cpu():
    q, ql, g, gl = make_labelled(7)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        metrics, _ = evaluate(q, ql, g, gl, "u1652", device="cuda")
    assert metrics == evaluate(q, ql, g, gl, "u1652")[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cuda_matches_reference(protocol):
    q, ql, g, gl = _data(protocol, 8)
    metrics, res = evaluate(q, ql, g, gl, protocol, device="cuda")
    _check_against_reference(metrics, res, q, ql, g, gl, protocol)


# ----------------------------------------------------------------------------------------------------------
# Hand-computed cases

# d = 1 and query value 1, so the score of a gallery item is its value.
# Gallery: row 0: 0.9 label 2; row 1: 0.8 label 1; row 2: 0.7 junk; row 3: 0.6 label 1; row 4: 0.5 label 3.
# Ranking without junk: rows 0, 1, 3, 4 at ranks 0, 1, 2, 3.
#   query label 1: positives at ranks 1 and 2.
#       u1652 AP = 1/2 * [(0/1 + 1/2)/2 + (1/2 + 2/3)/2] = 1/2 * (0.25 + 0.583333) = 0.416667
#       geoalign AP = (1/2 + 2/3)/2 = 0.583333
#   query label 3: one positive at rank 3: u1652 AP = (0/3 + 1/4)/2 = 0.125, geoalign AP = 1/4
#   query label 7: no positive: rank -1, AP 0 (still counted in the denominator)
#   query label 2: one positive at rank 0: AP = (1 + 1)/2 = 1 under both
# R@1 = 1/4 (only the last query), R@2 = 2/4, R@1% = CMC[round(0.05) = 0] = R@1.
# u1652 AP = (0.416667 + 0.125 + 0 + 1)/4 = 0.385417; geoalign AP = (0.583333 + 0.25 + 0 + 1)/4 = 0.458333.
_HAND_G = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]], np.float32)
_HAND_GL = np.array([2, 1, -1, 1, 3])
_HAND_Q = np.ones((4, 1), np.float32)
_HAND_QL = np.array([1, 3, 7, 2])


@pytest.mark.parametrize(
    "protocol, ap, mean_ap",
    [
        ("u1652", [5 / 12, 0.125, 0.0, 1.0], 100 * (5 / 12 + 0.125 + 1) / 4),
        ("geoalign", [7 / 12, 0.25, 0.0, 1.0], 100 * (7 / 12 + 0.25 + 1) / 4),
    ],
)
@pytest.mark.parametrize("chunk_rows", [None, 1, 2])
def test_hand_computed_labelled(protocol, ap, mean_ap, chunk_rows):
    if chunk_rows is None:
        metrics, res = evaluate(_HAND_Q, _HAND_QL, _HAND_G, _HAND_GL, protocol, ks=(1, 2), topk=2)
    else:
        metrics, res = evaluate_streaming(
            _HAND_Q, _HAND_QL, iter_array_chunks(_HAND_G, _HAND_GL, chunk_rows), protocol, ks=(1, 2), topk=2
        )
    assert metrics == {
        "protocol": protocol,
        "n_queries": 4,
        "n_gallery": 5,
        "R@1": pytest.approx(25.0),
        "R@2": pytest.approx(50.0),
        "R@1%": pytest.approx(25.0),
        "AP": pytest.approx(mean_ap, abs=1e-9),
    }
    assert res.first_rank.tolist() == [1, 3, -1, 0]
    np.testing.assert_allclose(res.ap, ap, atol=1e-12)
    assert res.n_positives.tolist() == [2, 1, 0, 1]
    assert res.topk.tolist() == [[0, 1]] * 4  # junk row 2 never appears
    np.testing.assert_allclose(res.topk_scores, [[0.9, 0.8]] * 4)


def test_hand_computed_cvft():
    # Query 0 (+1) vs gallery [0.95, 0.1, 0.5]: true 0.95 is best -> rank 0.
    # Query 1 (-1): scores [-0.95, -0.1, -0.5]: true -0.1 is best -> rank 0.
    # Query 2 (+1): true 0.5, only 0.95 is better -> rank 1.
    # R@1 = 2/3, R@2 = 3/3, R@1% = share with rank < int(0.03) = 0 -> 0.
    q = np.array([[1.0], [-1.0], [1.0]], np.float32)
    g = np.array([[0.95], [0.1], [0.5]], np.float32)
    metrics, res = evaluate(q, None, g, None, "cvft", ks=(1, 2), topk=3)
    assert metrics == {
        "protocol": "cvft",
        "n_queries": 3,
        "n_gallery": 3,
        "R@1": pytest.approx(200 / 3),
        "R@2": pytest.approx(100.0),
        "R@1%": 0.0,
    }
    assert res.first_rank.tolist() == [0, 0, 1]
    assert res.topk.tolist() == [[0, 2, 1], [1, 2, 0], [0, 2, 1]]
    assert np.isnan(res.ap).all() and res.n_positives.tolist() == [1, 1, 1]
    # Labels do not define matches under cvft (junk included); only agreeing pair ids are checked.
    metrics2, res2 = evaluate(q, np.array([-1, -1, 5]), g, np.array([-1, 3, -1]), "cvft", ks=(1, 2), topk=3)
    assert metrics2 == metrics and res2.first_rank.tolist() == [0, 0, 1]


@pytest.mark.parametrize("chunk_rows", [None, 1])
def test_ties_go_to_the_query(chunk_rows):
    # Scores: row 0 = 0.5 (negative), row 1 = 0.5 (positive), row 2 = 0.5 (positive), row 3 = 0.75 (negative).
    # Positives win ties with negatives and take consecutive ranks: ranks 1 and 2 (only row 3 above).
    g = np.array([[0.5], [0.5], [0.5], [0.75]], np.float32)
    gl = np.array([9, 1, 1, 8])
    q = np.ones((1, 1), np.float32)
    if chunk_rows is None:
        metrics, res = evaluate(q, np.array([1]), g, gl, "geoalign", ks=(1, 2), topk=1)
    else:
        metrics, res = evaluate_streaming(
            q, np.array([1]), iter_array_chunks(g, gl, chunk_rows), "geoalign", ks=(1, 2), topk=1
        )
    assert res.first_rank.tolist() == [1]
    assert res.ap[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics["R@2"] == 100.0 and metrics["R@1"] == 0.0


@pytest.mark.parametrize("chunk_rows", [None, 1, 2])
def test_top_k_orders_equal_scores_by_gallery_row(chunk_rows):
    g = np.array([[0.5], [0.9], [0.5], [0.5], [0.1]], np.float32)
    gl = np.array([1, 2, 3, 4, 5])
    q = np.ones((1, 1), np.float32)
    if chunk_rows is None:
        _, res = evaluate(q, np.array([9]), g, gl, "u1652", topk=4)
    else:
        _, res = evaluate_streaming(q, np.array([9]), iter_array_chunks(g, gl, chunk_rows), "u1652", topk=4)
    assert res.topk.tolist() == [[1, 0, 2, 3]]
    np.testing.assert_allclose(res.topk_scores, [[0.9, 0.5, 0.5, 0.5]])


@pytest.mark.slow
@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_no_query_has_a_positive(chunk_rows):
    q, _, g, gl = make_labelled(9)
    ql = np.full(q.shape[0], 10_000)
    chunks = iter_array_chunks(g, gl, chunk_rows or len(g))
    metrics, res = evaluate_streaming(q, ql, chunks, "u1652")
    assert metrics["R@1"] == metrics["R@1%"] == metrics["AP"] == 0.0
    assert (res.first_rank == -1).all() and (res.ap == 0).all() and (res.n_positives == 0).all()
    _check_against_reference(metrics, res, q, ql, g, gl, "u1652")


def test_summarize_r1_percent_thresholds():
    # u1652: R@1% = CMC[round(0.01 G)] (Python rounds half to even); cvft: rank < int(0.01 G).
    first = np.array([0, 2, 3, 4, -1])
    res = QueryResults(
        first_rank=first,
        ap=np.array([1.0, 0.5, 0.25, 0.2, 0.0]),
        topk=np.zeros((5, 1), np.int64),
        topk_scores=np.zeros((5, 1), np.float32),
        n_positives=np.array([1, 1, 1, 1, 0]),
    )
    assert summarize(res, "u1652", 250, (1,))["R@1%"] == pytest.approx(40.0)  # round(2.5) = 2: ranks 0, 2
    assert summarize(res, "u1652", 251, (1,))["R@1%"] == pytest.approx(60.0)  # round(2.51) = 3
    assert summarize(res, "u1652", 449, (1,))["R@1%"] == pytest.approx(80.0)  # round(4.49) = 4
    assert summarize(res, "cvft", 250, (1,))["R@1%"] == pytest.approx(20.0)  # int(2.5) = 2: rank 0 only
    assert summarize(res, "cvft", 499, (1,))["R@1%"] == pytest.approx(60.0)  # int(4.99) = 4
    m = summarize(res, "geoalign", 250, (1, 3, 5))
    assert (
        m["R@1"] == pytest.approx(20.0)
        and m["R@3"] == pytest.approx(40.0)
        and m["R@5"] == pytest.approx(80.0)
    )
    assert m["AP"] == pytest.approx(100 * (1 + 0.5 + 0.25 + 0.2) / 5)
    assert "AP" not in summarize(res, "cvft", 250, (1,))


def test_count_greater_is_exact_with_ties_and_odd_ranges():
    """The counting kernel, both paths, against brute force on data full of ties and degenerate ranges."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(120):
        b = int(torch.randint(1, 6, (1,), generator=gen))
        n = int(torch.randint(1, 400, (1,), generator=gen))
        p = int(torch.randint(1, 12, (1,), generator=gen))
        kind = trial % 4
        if kind == 0:
            s = torch.randn(b, n, generator=gen)
        elif kind == 1:
            s = torch.randint(-3, 4, (b, n), generator=gen).float()  # ties everywhere
        elif kind == 2:
            s = torch.randn(b, n, generator=gen) * 1e-30  # tiny range
        else:
            s = torch.randn(b, n, generator=gen)
            s[:, : n // 2] = 0.5  # a huge tie block
        n_pos = torch.randint(0, p + 1, (b,), generator=gen)
        t = torch.full((b, p), math.inf)
        for r in range(b):
            k = int(n_pos[r])
            if trial % 3:
                vals = s[r, torch.randint(0, n, (k,), generator=gen)]  # thresholds equal to some items
            else:
                vals = torch.randn(k, generator=gen)
            if kind == 1:
                vals = -vals.abs()  # -0.0 against +0.0 items
            t[r, :k] = vals.sort().values
        expected = torch.zeros(b, p, dtype=torch.int64)
        for r in range(b):
            for j in range(int(n_pos[r])):
                expected[r, j] = int((s[r] > t[r, j]).sum())
        assert torch.equal(count_greater(s, t, n_pos), expected), trial


# ----------------------------------------------------------------------------------------------------------
# Bad input


def _ok():
    q = _normalize(np.random.default_rng(0).normal(size=(4, 3)))
    g = _normalize(np.random.default_rng(1).normal(size=(6, 3)))
    return q, np.array([0, 1, 2, 3]), g, np.array([0, 1, 2, 3, -1, 5])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, ql, g, gl: (q, ql, g[:, :2], gl), "dimension 2 but the queries have 3"),
        (lambda q, ql, g, gl: (q, ql, g[:0], gl[:0]), "gallery is empty"),
        (lambda q, ql, g, gl: (q[:0], ql[:0], g, gl), "query set is empty"),
        (
            lambda q, ql, g, gl: (np.where(np.arange(4)[:, None] == 2, np.nan, q), ql, g, gl),
            "NaN or inf.*first row 2",
        ),
        (lambda q, ql, g, gl: (q, ql, np.where(np.arange(6)[:, None] == 1, np.inf, g), gl), "NaN or inf"),
        (lambda q, ql, g, gl: (q, ql, g, gl[:5]), "labels have shape"),
        (lambda q, ql, g, gl: (q, None, g, gl), "query labels are missing"),
        (lambda q, ql, g, gl: (q, ql.astype(str), g, gl), "labels must be integers"),
        (lambda q, ql, g, gl: (q[0], ql, g, gl), "2-D array"),
    ],
)
def test_bad_input_raises_user_error(change, match):
    args = change(*_ok())
    with pytest.raises(UserError, match=match):
        evaluate(*args, "u1652")


def test_bad_options_raise_user_error():
    q, ql, g, gl = _ok()
    with pytest.raises(UserError, match="topk=6 exceeds the 5 non-junk gallery items"):
        evaluate(q, ql, g, gl, "u1652", topk=6)
    with pytest.raises(UserError, match="topk=5 exceeds the 4 gallery items"):
        evaluate(q, None, g[:4], None, "cvft", topk=5)
    with pytest.raises(UserError, match="4 queries and 6 gallery items"):
        evaluate(q, ql, g, gl, "cvft", topk=1)
    with pytest.raises(UserError, match="unknown metric protocol 'recall'"):
        evaluate(q, ql, g, gl, "recall")
    with pytest.raises(UserError, match="ks must be"):
        evaluate(q, ql, g, gl, "u1652", ks=(0, 1), topk=1)
    with pytest.raises(UserError, match="topk must be a positive integer"):
        evaluate(q, ql, g, gl, "u1652", topk=0)
    with pytest.raises(UserError, match="block_size"):
        evaluate(q, ql, g, gl, "u1652", topk=1, block_size=0)
    with pytest.raises(UserError, match="unknown device|unsupported device"):
        evaluate(q, ql, g, gl, "u1652", topk=1, device="tpu")


def test_streaming_misuse_raises_user_error():
    q, ql, g, gl = _ok()
    with pytest.raises(UserError, match="gallery is empty"):
        evaluate_streaming(q, ql, lambda: iter([]), "u1652", topk=1)
    with pytest.raises(UserError, match="gallery is empty"):
        evaluate_streaming(q, ql, lambda: iter([(g[:0], gl[:0]), (g[:0], gl[:0])]), "u1652", topk=1)
    one_shot = iter_array_chunks(g, gl, 2)()  # an iterator, not a callable that makes fresh ones
    with pytest.raises(UserError, match="same chunks"):
        evaluate_streaming(q, ql, lambda: one_shot, "u1652", topk=1)
    calls = []

    def changing():
        calls.append(1)
        labels = gl if len(calls) == 1 else gl[::-1].copy()
        return iter_array_chunks(g, labels, 3)()

    with pytest.raises(UserError, match="chunk 0 differs between the two passes"):
        evaluate_streaming(q, ql, changing, "u1652", topk=1)
    with pytest.raises(UserError, match="not a \\(descriptors, labels\\) pair"):
        evaluate_streaming(q, ql, lambda: iter([g, g]), "u1652", topk=1)
    with pytest.raises(UserError, match="chunk 1.*dimension 2"):
        evaluate_streaming(q, ql, lambda: iter([(g, gl), (g[:, :2], gl)]), "u1652", topk=1)


def test_cvft_refuses_rows_that_are_not_the_same_pair():
    """With pair ids on both sides, a row shift (an image skipped on one side) is an error, not a score."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((5, 4)).astype(np.float32)
    ids = np.arange(5)
    m, _ = evaluate(q, ids, g, ids, "cvft", ks=(1,), topk=1)  # aligned: fine
    assert 0.0 <= m["R@1"] <= 100.0
    shifted = np.array([0, 1, 3, 4, 5])  # pair 2 missing in the gallery, pair 5 from elsewhere
    with pytest.raises(UserError, match="row 2 holds pair 2 on the query side and pair 3"):
        evaluate(q, ids, g, shifted, "cvft", ks=(1,), topk=1)
    unknown = np.full(5, -1)  # no pair ids: nothing to check, position decides
    evaluate(q, ids, g, unknown, "cvft", ks=(1,), topk=1)
    # streamed in chunks: the error names the row in the whole gallery
    chunks = [(g[:2], ids[:2]), (g[2:4], np.array([2, 9])), (g[4:], ids[4:])]
    with pytest.raises(UserError, match="row 3 holds pair 3 on the query side and pair 9"):
        evaluate_streaming(q, ids, lambda: iter(chunks), "cvft", ks=(1,), topk=1)
