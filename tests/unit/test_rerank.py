"""k-reciprocal re-ranking: the vectorised version against a plain per-item implementation of the recipe."""

from __future__ import annotations

import numpy as np
import pytest
from cvgl.core.errors import UserError
from cvgl.retrieve.metrics import evaluate, evaluate_scores
from cvgl.retrieve.rerank import k_reciprocal_distance


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n_q=30, n_g=70, d=12, n_labels=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_labels, d))
    ql = rng.integers(0, n_labels, n_q)
    gl = rng.integers(0, n_labels, n_g)
    q = _unit(centers[ql] + 0.9 * rng.standard_normal((n_q, d)))
    g = _unit(centers[gl] + 0.9 * rng.standard_normal((n_g, d)))
    return q, ql, g, gl


def reference_rerank(q, g, k1, k2, lam):
    """One item at a time, sets and loops, float64: the recipe as the paper and layumi's code state it."""
    x = np.concatenate([q, g]).astype(np.float64)
    n_q, n = q.shape[0], x.shape[0]
    d = (2.0 - 2.0 * (x @ x.T)) ** 2
    d = (d / d.max(axis=0)).T
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r)
        for j in r:
            half = recip(j, int(np.around(k1 / 2)))
            if len(set(half) & set(r)) > 2.0 / 3 * len(half):
                expanded |= set(half)
        idx = sorted(expanded)
        w = np.exp(-d[i, idx])
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((n_q, n))
    for i in range(n_q):
        for j in range(n):
            m = np.minimum(v[i], v[j]).sum()
            jac[i, j] = 1 - m / (2 - m)
    return (jac * (1 - lam) + d[:n_q] * lam)[:, n_q:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.0)])
def test_vectorised_rerank_matches_the_per_item_recipe(k1, k2, lam):
    q, _, g, _ = _clustered(seed=k1)
    ours = k_reciprocal_distance(q, g, k1=k1, k2=k2, lambda_value=lam)
    ref = reference_rerank(q, g, k1, k2, lam)
    assert ours.shape == (30, 70) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-6)
    # The ranking a user gets must be the recipe's ranking. Items whose distances are equal within
    # float tolerance (with lambda 0 many Jaccard distances are exactly 1) may come in any order, so
    # compare orders through the reference distances instead of comparing argsort indices.
    ours_order = np.argsort(ours, axis=1, kind="stable")
    ref_along_ours = np.take_along_axis(ref, ours_order, axis=1)
    assert np.all(np.diff(ref_along_ours, axis=1) >= -4e-6), "our ranking contradicts the recipe's"
    # The top-10 lists hold the same distances: they differ at most by which of several tied items made it.
    np.testing.assert_allclose(ref_along_ours[:, :10], np.sort(ref, axis=1)[:, :10], atol=4e-6)


def test_reranked_ranks_come_from_the_reranked_distances():
    q, ql, g, gl = _clustered(n_q=40, n_g=120, seed=3)
    final = k_reciprocal_distance(q, g)
    metrics, res = evaluate_scores(-final, ql, gl, "u1652", topk=5)
    # Brute force from the same matrix: rank of the first positive after a full sort.
    order = np.argsort(final, axis=1, kind="stable")
    first = np.array(
        [np.flatnonzero(gl[order[i]] == ql[i])[0] if (gl == ql[i]).any() else -1 for i in range(40)]
    )
    np.testing.assert_array_equal(res.first_rank, first)
    np.testing.assert_array_equal(res.topk, order[:, :5])
    assert metrics["R@1"] == 100.0 * np.mean(first == 0)


def test_rerank_helps_on_clustered_data():
    q, ql, g, gl = _clustered(n_q=60, n_g=200, d=16, n_labels=8, seed=5)
    before, _ = evaluate(q, ql, g, gl, "u1652")
    after, _ = evaluate_scores(-k_reciprocal_distance(q, g), ql, gl, "u1652")
    assert after["AP"] > before["AP"]


def test_rerank_refuses_large_inputs_and_bad_parameters():
    q, _, g, _ = _clustered()
    with pytest.raises(UserError, match="rerank_max_items=50"):
        k_reciprocal_distance(q, g, max_items=50)
    with pytest.raises(UserError, match="k2=30"):
        k_reciprocal_distance(q, g, k1=5, k2=30)
    with pytest.raises(UserError, match="k1=100"):
        k_reciprocal_distance(q, g, k1=100)
    with pytest.raises(UserError, match="one dimension"):
        k_reciprocal_distance(q, g[:, :5])
