"""Retrieval at scale: streamed and cached FAISS indexes, exact metrics whatever serves the top-K, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from cvgl.retrieve.indexes import (
    IndexParams,
    ServedIndex,
    build_index,
    gc_indexes,
    index_dir,
    index_key,
    open_or_build,
    recall_vs_exact,
    sample_rows,
    search,
    stale_indexes,
)
from cvgl.retrieve.metrics import evaluate, evaluate_scores, iter_array_chunks
from cvgl.retrieve.runner import run_retrieval

from tests.helpers import cli, one_error_line


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    """faiss' OpenMP threads spin-wait; on cores shared with other jobs one thread is many times faster."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _clustered(n: int, d: int = 16, n_centers: int = 25, seed: int = 0, noise: float = 0.35):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d))
    labels = rng.integers(0, n_centers, n)
    x = centers[labels] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels.astype(np.int64)


def _chunks(x: np.ndarray, rows: int):
    return lambda: (x[s : s + rows] for s in range(0, len(x), rows))


def _exact_topk(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ g.T.astype(np.float64)), axis=1, kind="stable")[:, :k]


def _store_pair(tmp_path: Path, n_q=40, n_g=600, d=16, seed=0, shard_rows=128, junk=0):
    """Query and gallery entries in a fresh cache (several gallery shards)."""
    store = CacheStore(tmp_path / "cache")
    g, gl = _clustered(n_g, d, seed=seed)
    q, ql = _clustered(n_q, d, seed=seed + 1)
    gl[:junk] = -1
    store.put_arrays(
        {"t": "q", "s": seed}, q, ql, [f"q{i}" for i in range(n_q)], alias="q", shard_rows=shard_rows
    )
    store.put_arrays(
        {"t": "g", "s": seed}, g, gl, [f"g{i}" for i in range(n_g)], alias="g", shard_rows=shard_rows
    )
    return store, q, ql, g, gl


def _run(store: CacheStore, out: Path, *overrides: str) -> dict:
    cfg = load_config(None, ["query=q", "gallery=g", f"out={out}", "retrieve.report=false", *overrides])
    return run_retrieval(cfg, store, RunFolder(cfg, "retrieve", cache_root=store.root))


# ----------------------------------------------------------------------------------------------------------
# Building and searching


def test_training_sample_is_drawn_across_every_shard():
    x = np.arange(1000, dtype=np.float32)[:, None].repeat(4, 1)  # row i holds the value i
    s = sample_rows(_chunks(x, 100), 1000, 300, seed=0)
    rows = s[:, 0].astype(int)
    assert s.shape == (300, 4) and len(set(rows)) == 300
    assert set(rows // 100) == set(range(10))  # every shard contributes
    np.testing.assert_array_equal(s, x[np.sort(rows)])
    with pytest.raises(UserError, match="expected 2000"):
        sample_rows(_chunks(x, 100), 2000, 10, seed=0)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat"])
def test_exhaustive_settings_give_the_exact_top_k_from_streamed_chunks(kind):
    g, _ = _clustered(2000, seed=1)
    q, _ = _clustered(50, seed=2)
    p = IndexParams(kind=kind, nlist=16, nprobe=16)  # ivf: every cell probed = exhaustive
    index, info = build_index(_chunks(g, 300), 2000, 16, p)
    assert index.ntotal == 2000 and info["build_s"] >= 0
    _, ids = search(ServedIndex(index, p.resolved(2000, 16)), q, 10)
    np.testing.assert_array_equal(ids, _exact_topk(q, g, 10))


@pytest.mark.parametrize(
    "kind,extra,min_recall",
    [
        ("hnsw", {}, 0.95),
        ("ivf_pq", {"pq_m": 8, "refine": 8, "nprobe": 16}, 0.95),
        ("ivf_pq", {"pq_m": 8}, 0.4),
    ],
)
def test_ann_indexes_reach_their_recall_on_clustered_data(kind, extra, min_recall):
    g, _ = _clustered(2000, seed=3)
    q, _ = _clustered(100, seed=4)
    p = IndexParams(kind=kind, **extra).resolved(2000, 16)
    index, _ = build_index(_chunks(g, 512), 2000, 16, p)
    _, ids = search(ServedIndex(index, p), q, 10)
    k_recall, nn_recall = recall_vs_exact(ids, _exact_topk(q, g, 10))
    assert k_recall >= min_recall and nn_recall >= k_recall - 0.1


def test_junk_rows_never_appear_in_index_results():
    g, _ = _clustered(800, seed=5)
    q = g[:20].copy()  # each query's best match is a junk row
    p = IndexParams(kind="hnsw").resolved(800, 16)
    index, _ = build_index(_chunks(g, 800), 800, 16, p)
    _, ids = search(ServedIndex(index, p), q, 5, exclude=np.arange(20))
    assert (ids >= 20).all()
    with pytest.raises(UserError, match="exceeds the 780 searchable"):
        search(ServedIndex(index, p), q, 781, exclude=np.arange(20))


def test_auto_parameters_and_their_refusals():
    p = IndexParams(kind="ivf_pq").resolved(1_000_000, 128)
    assert p.nlist == 4000 and p.pq_m == 32 and p.train_size == 256_000
    assert IndexParams(kind="ivf_pq").resolved(100_000, 2560).pq_m == 640
    with pytest.raises(UserError, match="does not divide"):
        IndexParams(kind="ivf_pq", pq_m=7).resolved(10_000, 128)
    with pytest.raises(UserError, match="pq_nbits"):
        IndexParams(kind="ivf_pq").resolved(100, 16)  # 256 PQ centroids, 100 rows
    with pytest.raises(UserError, match="empty"):
        IndexParams(kind="hnsw").resolved(0, 16)
    # Search-time settings do not change the cache key; build settings do.
    a = IndexParams(kind="ivf_flat", nprobe=4).resolved(5000, 16)
    assert index_key("k", a) == index_key("k", IndexParams(kind="ivf_flat", nprobe=64).resolved(5000, 16))
    assert index_key("k", a) != index_key("k", IndexParams(kind="ivf_flat", nlist=8).resolved(5000, 16))


# ----------------------------------------------------------------------------------------------------------
# The index cache


def test_index_is_cached_once_and_reused(tmp_path):
    store, q, *_ = _store_pair(tmp_path)
    g = store.open("g")
    first = open_or_build(store, g, IndexParams(kind="ivf_flat", nprobe=2))
    d = index_dir(store, first.info["index_key"])
    assert first.info["index_cache"] == "built"
    assert sorted(p.name for p in d.iterdir()) == ["index.faiss", "index.json"]
    meta = json.loads((d / "index.json").read_text())
    assert meta["gallery"] == g.key and meta["ntotal"] == 600
    again = open_or_build(
        store, g, IndexParams(kind="ivf_flat", nprobe=8)
    )  # other search setting: same index
    assert again.info["index_cache"] == "reused" and again.info["index_key"] == first.info["index_key"]
    np.testing.assert_array_equal(
        search(again, q, 5)[1],
        search(open_or_build(store, g, IndexParams(kind="ivf_flat", nprobe=8)), q, 5)[1],
    )


def test_stale_index_is_refused_then_rebuilt_and_removed_gallery_is_collected(tmp_path):
    store, *_ = _store_pair(tmp_path)
    g = store.open("g")
    built = open_or_build(store, g, IndexParams(kind="hnsw"))
    assert stale_indexes(store) == []
    # The same gallery key now holds other rows (e.g. recomputed non-deterministically): the index is stale.
    spec = g.spec
    store.rm("g")
    x, labels = _clustered(600, seed=9)
    g2 = store.put_arrays(spec, x, labels, [f"g{i}" for i in range(600)], alias="g", shard_rows=128)
    assert g2.key == g.key
    assert [why for _, why in stale_indexes(store)] == [
        f"gallery entry {g.key[:12]} changed since the index was built"
    ]
    with pytest.raises(UserError, match=r"changed since\); rerun with retrieve.rebuild_index=true"):
        open_or_build(store, g2, IndexParams(kind="hnsw"))
    rebuilt = open_or_build(store, g2, IndexParams(kind="hnsw"), rebuild=True)
    assert (
        rebuilt.info["index_cache"].startswith("rebuilt")
        and rebuilt.info["index_key"] == built.info["index_key"]
    )
    assert open_or_build(store, g2, IndexParams(kind="hnsw")).info["index_cache"] == "reused"
    store.rm("g")
    assert "was removed" in stale_indexes(store)[0][1]
    assert len(gc_indexes(store)) == 1 and stale_indexes(store) == []


# ----------------------------------------------------------------------------------------------------------
# The stage: exact metrics whatever serves the lists


@pytest.mark.parametrize("index", ["hnsw", "ivf_pq"])
def test_ann_runs_keep_exact_metrics_and_report_recall_against_exact(tmp_path, index):
    store, q, ql, g, gl = _store_pair(tmp_path, junk=7)
    exact = _run(store, tmp_path / "flat")
    extra = ["retrieve.pq_m=4", "retrieve.pq_nbits=6"] if index == "ivf_pq" else []
    m = _run(store, tmp_path / index, f"retrieve.index={index}", *extra)
    for k in ("R@1", "R@5", "R@10", "R@1%", "AP"):
        assert m[k] == exact[k]
    ref, _ = evaluate(q, ql, g, gl, "u1652")
    assert m["AP"] == pytest.approx(ref["AP"], abs=1e-9)
    assert m["metrics_source"].startswith("exact") and index in m["topk_source"]
    ann = m["ann"]
    assert ann["index"] == index and ann["sample"] == 40 and ann["index_cache"] == "built"
    assert 0.3 <= ann["recall@10_vs_exact"] <= 1.0 and "nn_recall@10_vs_exact" in ann
    rows = (tmp_path / index / "per_query.csv").read_text().splitlines()
    junk_names = {f"g{i}" for i in range(7)}
    assert len(rows) == 41 and not any(n in junk_names for r in rows[1:] for n in r.split(",")[-1].split())
    run = json.loads((tmp_path / index / "run.json").read_text())
    assert any(k.startswith(f"index:{index}") for k in run["cache_keys"])
    assert (
        _run(store, tmp_path / "again", f"retrieve.index={index}", *extra)["ann"]["index_cache"] == "reused"
    )


def test_rerank_reports_metrics_with_and_without(tmp_path):
    store, q, ql, g, gl = _store_pair(tmp_path, n_g=300)
    m = _run(store, tmp_path / "rr", "retrieve.rerank=k_reciprocal", "retrieve.k1=10", "retrieve.k2=3")
    plain, _ = evaluate(q, ql, g, gl, "u1652")
    assert m["without_rerank"]["AP"] == pytest.approx(plain["AP"])
    assert m["rerank"] == {"method": "k_reciprocal", "k1": 10, "k2": 3, "lambda_value": 0.3}
    assert m["topk_source"].startswith("k-reciprocal") and m["AP"] != plain["AP"]
    with pytest.raises(UserError, match="rerank_max_items=100"):
        _run(store, tmp_path / "big", "retrieve.rerank=k_reciprocal", "retrieve.rerank_max_items=100")


def test_topk_larger_than_the_gallery_is_refused_and_default_clamps(tmp_path):
    store, *_ = _store_pair(tmp_path, n_g=8, junk=2)
    with pytest.raises(UserError, match="retrieve.topk=7 exceeds the 6 rankable items"):
        _run(store, tmp_path / "a", "retrieve.topk=7")
    m = _run(store, tmp_path / "b")  # default topk: 10, clamped to the 6 rankable items
    assert len((tmp_path / "b" / "per_query.csv").read_text().splitlines()[1].split(",")[-1].split()) == 6
    assert m["R@10"] >= m["R@5"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streaming_and_score_matrix_paths_match_cpu():
    g, gl = _clustered(5000, d=64, seed=11)
    q, ql = _clustered(300, d=64, seed=12)
    for protocol in ("u1652", "geoalign"):
        cpu, rc = evaluate(q, ql, g, gl, protocol)
        from cvgl.retrieve.metrics import evaluate_streaming

        gpu, rg = evaluate_streaming(q, ql, iter_array_chunks(g, gl, 700), protocol, device="cuda")
        assert cpu == gpu
        np.testing.assert_array_equal(rc.first_rank, rg.first_rank)
        s, _ = evaluate_scores(q @ g.T, ql, gl, protocol, device="cuda")
        assert s["R@1"] == cpu["R@1"]


# ----------------------------------------------------------------------------------------------------------
# Bad input on the command line: one line, exit code 2


@pytest.mark.slow
def test_bad_retrieval_input_is_refused_with_one_clear_line(tmp_path):
    store, *_ = _store_pair(tmp_path, n_g=300)
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    store.put_arrays({"t": "small"}, x, np.zeros(5, np.int64), [f"s{i}" for i in range(5)], alias="small")
    store.writer("0" * 64, {"t": "empty"}, shape=(16,), dtype="float32").finish(alias="empty")
    with pytest.raises(UserError, match=r"dimension 16\) but gallery small has \[7\] \(dimension 7\)"):
        _run(store, tmp_path / "a", "gallery=small")
    with pytest.raises(UserError, match="gallery empty is empty"):
        _run(store, tmp_path / "b", "gallery=empty")
    with pytest.raises(UserError, match="retrieve.topk=500 exceeds the 300 rankable items"):
        _run(store, tmp_path / "c", "retrieve.topk=500")
    # On the command line: a cached index whose gallery entry changed since is one line, exit code 2.
    open_or_build(store, store.open("g"), IndexParams(kind="hnsw"))
    spec = store.open("g").spec
    store.rm("g")
    x, labels = _clustered(300, seed=5)
    store.put_arrays(spec, x, labels, [f"g{i}" for i in range(300)], alias="g", shard_rows=128)
    p = cli("retrieve", "query=q", "gallery=g", "retrieve.index=hnsw", cache=tmp_path / "cache", cwd=tmp_path)
    line = one_error_line(p)
    assert "changed since" in line and "retrieve.rebuild_index=true" in line
