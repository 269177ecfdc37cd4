"""CVFT through the alignment stage: cached conv maps in, aligned descriptors and cvft metrics out."""

import numpy as np
import pytest
from cvgl.align.stage import run_alignment
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from cvgl.retrieve.runner import run_retrieval

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _maps(store, n=48, n_aerial=None, seed=0, channels=8):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_aerial or n, channels, 16, 16)).astype(np.float32)
    g = rng.standard_normal((n, channels, 7, 39)).astype(np.float32)
    k = min(n, len(a))
    g[:k, :, :, :16] += 2 * a[:k, :, :7, :]  # a spatial correspondence the heads can learn
    store.put_arrays({"k": f"g{seed}{n}"}, g, np.arange(n), [f"g{i}" for i in range(n)], alias="cv.ground@conv5_3",
                     extra={"view": "ground"}, shard_rows=16)
    store.put_arrays({"k": f"a{seed}{len(a)}"}, a, np.arange(len(a)), [f"a{i}" for i in range(len(a))],
                     alias="cv.aerial@conv5_3", extra={"view": "aerial"}, shard_rows=16)


def _cfg(tmp_path, method, *extra):
    return load_config(None, [
        "name=cv", "dataset.layout=cvusa", "dataset.mode=G2A", "backbone.layers=[conv5_3]", f"align.method={method}",
        "align.params={epochs: 2, batch_size: 8, lr: 0.0001}", "protocol=cvft", f"out={tmp_path / method}",
        "align.device=cpu", "retrieve.device=cpu", *extra,
    ])


@pytest.mark.parametrize("method", ["cvft", "vgg_conv", "vgg_gp"])
def test_each_variant_caches_both_views_and_evaluates_under_cvft(tmp_path, method):
    store = CacheStore(tmp_path / "c")
    _maps(store)
    cfg = _cfg(tmp_path, method)
    run = RunFolder(cfg, "align")
    out = run_alignment(cfg, store, run)
    assert {e.view for e in out} == {"ground", "aerial"} and not any(e.reused for e in out)
    g = store.open(f"cv.{method}.ground")
    assert g.count == 48 and g.manifest.parents == [store.open("cv.ground@conv5_3").key]
    m = run_retrieval(cfg, store, run)
    assert m["protocol"] == "cvft" and "AP" not in m and m["n_queries"] == m["n_gallery"] == 48
    assert all(e.reused for e in run_alignment(cfg, store, RunFolder(cfg, "align")))


@pytest.mark.slow
def test_same_seed_gives_identical_descriptors(tmp_path):
    a, b = CacheStore(tmp_path / "a"), CacheStore(tmp_path / "b")
    for s in (a, b):
        _maps(s)
        cfg = _cfg(tmp_path, "cvft", f"out={s.root}/run")
        run_alignment(cfg, s, RunFolder(cfg, "align"))
    np.testing.assert_array_equal(a.open("cv.cvft.ground").read()[0], b.open("cv.cvft.ground").read()[0])


def test_ground_and_aerial_of_different_lengths_are_refused(tmp_path):
    store = CacheStore(tmp_path / "c")
    _maps(store, n=48, n_aerial=40)
    cfg = _cfg(tmp_path, "cvft")
    with pytest.raises(UserError, match="has 48 rows but aerial entry .* has 40"):
        run_alignment(cfg, store, RunFolder(cfg, "align"))
    assert not [a for a in store.aliases() if ".cvft." in a]


def test_pooled_descriptors_instead_of_conv_maps_are_refused(tmp_path):
    store = CacheStore(tmp_path / "c")
    rng = np.random.default_rng(0)
    for v in ("ground", "aerial"):
        store.put_arrays({"k": v}, rng.standard_normal((20, 512)).astype(np.float32), np.arange(20),
                         [f"{v}{i}" for i in range(20)], alias=f"cv.{v}@conv5_3", extra={"view": v})
    cfg = _cfg(tmp_path, "cvft")
    with pytest.raises(UserError, match="CVFT needs VGG16 conv maps"):
        run_alignment(cfg, store, RunFolder(cfg, "align"))
