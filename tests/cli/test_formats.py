"""The field's feature files in and out: University-1652 .mat, hloc global-descriptor HDF5,
VPR-methods-evaluation .npy, through the real command line."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io
from cvgl.cache.store import CacheStore

from tests.helpers import cli, one_error_line


def _paths(view: str, labels: list[int]) -> list[str]:
    return [f"./data/test/{view}/{lab:04d}/image-{i:02d}.jpeg" for i, lab in enumerate(labels)]


@pytest.mark.slow
def test_pytorch_result_mat_imports_retrieves_and_exports_back_for_evaluate_gpu(tmp_path):
    rng = np.random.default_rng(0)
    q_lab, g_lab = [3, 1, 2, 3, 1], [1, 2, 3, 4, -1]
    qf = rng.standard_normal((5, 16)).astype(np.float32)
    gf = rng.standard_normal((5, 16)).astype(np.float32)
    src = tmp_path / "pytorch_result.mat"
    scipy.io.savemat(
        src,
        {
            "query_f": qf,
            "query_label": q_lab,
            "query_path": _paths("query_drone", q_lab),
            "gallery_f": gf,
            "gallery_label": g_lab,
            "gallery_path": _paths("gallery_satellite", g_lab),
        },
    )
    cache = tmp_path / "cache"
    p = cli("cache", "import", str(src), "--alias", "u", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    store = CacheStore(cache)
    for side, f, lab, view in (("query", qf, q_lab, "query_drone"), ("gallery", gf, g_lab, "gallery_satellite")):
        entry = store.open(f"u.{side}")
        desc, labels, names = entry.read()
        np.testing.assert_array_equal(desc, f)
        assert labels.tolist() == lab and names == _paths(view, lab)
        assert entry.manifest.extra["view"] == view

    # Usable as is: R@1 under University-1652's protocol equals a direct computation.
    p = cli("retrieve", "demo", "query=u.query", "gallery=u.gallery", "retrieve.report=false", "out=r", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    scores = qf @ gf.T
    scores[:, np.array(g_lab) == -1] = -np.inf  # junk
    expected_r1 = 100 * np.mean(np.array(g_lab)[scores.argmax(1)] == np.array(q_lab))
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["R@1"] == expected_r1

    # Export: the query side, then the gallery side, into one pytorch_result.mat as evaluate_gpu.py reads it.
    for side in ("query", "gallery"):
        p = cli("cache", "export", f"u.{side}", "--format", "mat", "--out", "ex", cache=cache, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
    m = scipy.io.loadmat(tmp_path / "ex" / "pytorch_result.mat")
    np.testing.assert_array_equal(m["query_f"], qf)
    np.testing.assert_array_equal(m["gallery_f"], gf)
    assert m["query_label"][0].tolist() == q_lab and m["gallery_label"][0].tolist() == g_lab
    assert [s.rstrip() for s in m["query_path"]] == _paths("query_drone", q_lab)
    assert not [f for f in (tmp_path / "ex").iterdir() if f.name != "pytorch_result.mat"]  # no temporaries left


def test_mat_without_the_expected_keys_is_one_line_and_imports_nothing(tmp_path):
    src = tmp_path / "features.mat"
    scipy.io.savemat(src, {"feat": np.zeros((2, 4), np.float32)})
    cache = tmp_path / "cache"
    p = cli("cache", "import", str(src), cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "query_f" in line and "gallery_label" in line and "feat" in line
    assert not (cache / "entries").exists() or not any((cache / "entries").iterdir())


def test_hloc_global_descriptors_import_one_row_per_image_name_with_folder_labels(tmp_path):
    rng = np.random.default_rng(1)
    names = ["query_drone/0002/b.jpeg", "gallery_satellite/0001/1.jpg", "query_drone/0001/a.jpeg"]
    desc = {n: rng.standard_normal(8).astype(np.float16) for n in names}
    src = tmp_path / "global-feats-netvlad.h5"
    with h5py.File(src, "w") as f:
        for n in names:  # as hloc writes them: a group per name ('/' nests), global_descriptor inside
            grp = f.create_group(n)
            grp.create_dataset("global_descriptor", data=desc[n])
            grp.create_dataset("image_size", data=np.array([64, 64]))
    cache = tmp_path / "cache"
    p = cli("cache", "import", str(src), "--alias", "hl", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got, labels, got_names = CacheStore(cache).open("hl").read()
    assert sorted(got_names) == sorted(names)
    for row, n in enumerate(got_names):
        np.testing.assert_array_equal(got[row], desc[n].astype(np.float32))
        assert labels[row] == int(n.split("/")[1])


@pytest.mark.slow
def test_vpr_methods_evaluation_folder_imports_database_and_queries_with_their_names(tmp_path):
    rng = np.random.default_rng(2)
    log = tmp_path / "logs" / "default"
    log.mkdir(parents=True)
    db = rng.standard_normal((4, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    np.save(log / "database_descriptors.npy", db)
    np.save(log / "queries_descriptors.npy", q)
    names = [f"database/@{e}@4.0@.jpg" for e in range(4)] + [f"queries/@{e}@4.0@.jpg" for e in range(2)]
    (tmp_path / "paths.txt").write_text("\n".join(names) + "\n")
    cache = tmp_path / "cache"
    p = cli("cache", "import", str(log), "--names", "paths.txt", "--alias", "sf", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    store = CacheStore(cache)
    d_desc, d_lab, d_names = store.open("sf.database").read()
    q_desc, q_lab, q_names = store.open("sf.queries").read()
    np.testing.assert_array_equal(d_desc, db)
    np.testing.assert_array_equal(q_desc, q)
    assert d_names == names[:4] and q_names == names[4:]
    assert (d_lab == -1).all() and (q_lab == -1).all()  # no labels in the files: unknown

    p = cli("cache", "import", str(log), "--names", "paths.txt", "--format", "vpr", "--alias", "sf2", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr  # the same rows again: same keys, nothing new written
    assert store.open("sf2.queries").key == store.open("sf.queries").key
