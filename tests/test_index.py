"""The FAISS flat inner-product index against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from cvgl.core.errors import UserError
from cvgl.retrieve.index import add_chunks, build_flat_index, gpu_available, search
from cvgl.retrieve.metrics import evaluate


def _data(n_q=20, n_g=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n_q, d)).astype(np.float32)
    g = rng.normal(size=(n_g, d)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)


def _brute(q, g, k):
    s = q.astype(np.float64) @ g.astype(np.float64).T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


@pytest.mark.parametrize("use_gpu", ["auto", False])
def test_search_matches_brute_force(use_gpu):
    q, g = _data()
    index = build_flat_index(g.shape[1], use_gpu=use_gpu)
    assert add_chunks(index, [g]) == g.shape[0]
    scores, ids = search(index, q, 7)
    ref_s, ref_i = _brute(q, g, 7)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (20, 7)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


def test_chunks_keep_gallery_row_order_and_accept_any_layout():
    q, g = _data(seed=1)
    index = build_flat_index(g.shape[1], use_gpu=False)
    labels = np.arange(g.shape[0])
    # (descriptors, labels) tuples, float64, a Fortran-ordered chunk and an empty one.
    chunks = [(g[:100].astype(np.float64), labels[:100]), np.asfortranarray(g[100:170]), g[170:170], g[170:]]
    assert add_chunks(index, chunks) == g.shape[0]
    assert index.ntotal == g.shape[0]
    _, ids = search(index, q[:, ::1].astype(np.float64), 5)
    np.testing.assert_array_equal(ids, _brute(q, g, 5)[1])


def test_search_agrees_with_metrics_top_k():
    q, g = _data(n_q=40, n_g=40, seed=2)
    index = build_flat_index(g.shape[1], use_gpu=False)
    add_chunks(index, [g])
    _, ids = search(index, q, 10)
    _, res = evaluate(q, None, g, None, "cvft", topk=10)
    np.testing.assert_array_equal(ids, res.topk)


def test_bad_input_raises_user_error():
    q, g = _data()
    index = build_flat_index(16, use_gpu=False)
    with pytest.raises(UserError, match="index is empty"):
        search(index, q, 1)
    with pytest.raises(UserError, match="dimension 8 but the index has 16"):
        add_chunks(index, [g[:, :8]])
    add_chunks(index, [g[:5]])
    with pytest.raises(UserError, match="k=6 exceeds the 5 gallery items"):
        search(index, q, 6)
    with pytest.raises(UserError, match="k must be a positive integer"):
        search(index, q, 0)
    with pytest.raises(UserError, match="dimension 15 but the index has 16"):
        search(index, q[:, :15], 1)
    with pytest.raises(UserError, match="query set is empty"):
        search(index, q[:0], 1)
    with pytest.raises(UserError, match="NaN or inf"):
        search(index, np.full((1, 16), np.nan, np.float32), 1)
    with pytest.raises(UserError, match="2-D"):
        search(index, q[0], 1)
    with pytest.raises(UserError, match="positive integer"):
        build_flat_index(0)
    with pytest.raises(UserError, match="use_gpu"):
        build_flat_index(4, use_gpu="yes")


@pytest.mark.skipif(gpu_available(), reason="checks the message on a machine without a faiss GPU")
def test_forcing_gpu_without_one_is_a_user_error():
    with pytest.raises(UserError, match="no GPU support"):
        build_flat_index(4, use_gpu=True)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss with GPU support and a GPU")
def test_gpu_index_matches_cpu():
    q, g = _data(n_g=1000)
    cpu, gpu = build_flat_index(16, use_gpu=False), build_flat_index(16, use_gpu=True)
    add_chunks(cpu, [g])
    add_chunks(gpu, [g[:400], g[400:]])
    np.testing.assert_array_equal(search(cpu, q, 10)[1], search(gpu, q, 10)[1])
