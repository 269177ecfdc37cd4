"""report.html compares a run with its baseline (retrieve.baseline=raw|none|<run folder>)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from cvgl.retrieve.baseline import rank_change
from cvgl.retrieve.reports import breakable, select_changes
from cvgl.retrieve.runner import run_retrieval

N_LOC, D = 8, 16


def _store(tmp_path: Path) -> CacheStore:
    """Raw drone/satellite entries (noisy) and an 'aligned' pair computed from them (less noisy)."""
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((N_LOC, D))
    ql, gl = np.repeat(np.arange(N_LOC), 3), np.arange(N_LOC)
    noise_q, noise_g = rng.standard_normal((len(ql), D)), rng.standard_normal((len(gl), D))
    qn = [f"query_drone/{i // 3:04d}/image-{i % 3:02d}_{i}.jpeg" for i in range(len(ql))]
    gn = [f"gallery_satellite/{i:04d}/{3830 + i}.jpg" for i in range(len(gl))]
    store = CacheStore(tmp_path / "cache")
    raw_q = store.put_arrays({"t": "rq"}, (centers[ql] + 1.6 * noise_q).astype(np.float32), ql, qn,
                             alias="toy.query_drone@3", extra={"view": "query_drone"})
    raw_g = store.put_arrays({"t": "rg"}, (centers[gl] + 1.6 * noise_g).astype(np.float32), gl, gn,
                             alias="toy.gallery_satellite@3", extra={"view": "gallery_satellite"})
    for view, x, lab, names, parent in (
        ("query_drone", centers[ql] + 0.9 * noise_q, ql, qn, raw_q.key),
        ("gallery_satellite", centers[gl] + 0.9 * noise_g, gl, gn, raw_g.key),
    ):
        store.put_arrays({"kind": "aligned", "parents": [parent], "view": view}, x.astype(np.float32), lab,
                         names, alias=f"toy.isms.{view}", parents=[parent],
                         extra={"method": "isms", "view": view})
    return store


def _run(store: CacheStore, out: Path, query: str, gallery: str, *overrides: str) -> dict:
    cfg = load_config(None, [f"query={query}", f"gallery={gallery}", f"out={out}", "retrieve.topk=3", *overrides])
    run = RunFolder(cfg, "retrieve", cache_root=store.root)
    m = run_retrieval(cfg, store, run)
    run.finish()
    return m


def _ranks(per_query: Path) -> list[int]:
    return [int(line.split(",")[2]) for line in per_query.read_text().splitlines()[1:]]


def test_raw_baseline_is_the_identity_run_on_the_aligned_entries_parents(tmp_path):
    store = _store(tmp_path)
    raw = _run(store, tmp_path / "raw", "toy.query_drone@3", "toy.gallery_satellite@3")
    assert "baseline" not in raw  # raw descriptors are their own baseline
    m = _run(store, tmp_path / "isms", "toy.isms.query_drone", "toy.isms.gallery_satellite")
    b = m["baseline"]
    assert b["source"] == "raw" and b["query"] == "toy.query_drone@3" and b["gallery"] == "toy.gallery_satellite@3"
    for k in ("R@1", "R@5", "AP"):
        assert b[k] == pytest.approx(raw[k])
    assert m["R@1"] != b["R@1"]  # the toy alignment changes the result, so the comparison shows something

    page = (tmp_path / "isms" / "report.html").read_text()
    # The title names the method and the run, not an entry alias.
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert "isms" in title and "isms" in title.split("·")[0] and "run isms" in title and "toy." not in title
    assert "baseline: raw descriptors" in page
    # Every shown query: this run's rank beside the raw one, sorted by the change (most worsened first).
    caps = re.findall(r"· rank (\d+|none)(?: · AP [\d.]+)?<br>raw descriptors: rank (\d+|none)", page)
    assert len(caps) == page.count('class="tile query"') > 0
    n_g = N_LOC
    changes = [(n_g if a == "none" else int(a)) - (n_g if r == "none" else int(r)) for a, r in caps]
    assert changes == sorted(changes, reverse=True) and any(c != 0 for c in changes)
    # The per-query ranks on the page are the two runs' own (per_query.csv of each).
    own, base = _ranks(tmp_path / "isms" / "per_query.csv"), _ranks(tmp_path / "raw" / "per_query.csv")
    shown = {int(a) - 1 for a, _ in caps if a != "none"}
    assert shown <= {r for r in own if r >= 0} and {int(r) - 1 for _, r in caps if r != "none"} <= set(base)


def test_baseline_none_and_a_run_folder(tmp_path):
    store = _store(tmp_path)
    _run(store, tmp_path / "raw", "toy.query_drone@3", "toy.gallery_satellite@3")
    off = _run(store, tmp_path / "off", "toy.isms.query_drone", "toy.isms.gallery_satellite", "retrieve.baseline=none")
    assert "baseline" not in off and "baseline:" not in (tmp_path / "off" / "report.html").read_text()
    m = _run(store, tmp_path / "vs", "toy.isms.query_drone", "toy.isms.gallery_satellite",
             f"retrieve.baseline={tmp_path / 'raw'}")
    assert m["baseline"]["source"] == str(tmp_path / "raw") and m["baseline"]["R@1"] == m["baseline"]["R@1"]
    assert "baseline: run raw" in (tmp_path / "vs" / "report.html").read_text()
    with pytest.raises(UserError, match="no per_query.csv"):
        _run(store, tmp_path / "bad", "toy.isms.query_drone", "toy.isms.gallery_satellite",
             f"retrieve.baseline={tmp_path / 'nowhere'}")


def test_a_failed_query_shows_its_true_match_beside_the_wrong_list(tmp_path):
    store = _store(tmp_path)
    _run(store, tmp_path / "isms", "toy.isms.query_drone", "toy.isms.gallery_satellite", "retrieve.topk=1",
         "retrieve.report_queries=24")
    page = (tmp_path / "isms" / "report.html").read_text()
    rows = page.split('<div class="row">')[1:]
    failed = [r for r in rows if 'class="tile ok"' not in r]
    assert failed, "the toy data has queries whose top-1 is wrong"
    for r in failed:
        assert r.count('class="tile truth"') == 1 and "first true match at rank" in r
    assert all('class="tile truth"' not in r for r in rows if 'class="tile ok"' in r)


def test_file_names_break_only_at_separators(tmp_path):
    assert breakable("gallery_satellite/0001/3834.jpg") == "gallery_<wbr>satellite/<wbr>0001/<wbr>3834.jpg"
    store = _store(tmp_path)
    _run(store, tmp_path / "isms", "toy.isms.query_drone", "toy.isms.gallery_satellite")
    page = (tmp_path / "isms" / "report.html").read_text()
    assert "3830.jpg" in page and "<wbr>3830.jpg" in page
    assert "anywhere" not in page and "break-all" not in page  # no CSS that breaks inside a word


def test_changes_are_sorted_most_worsened_first():
    first = np.array([0, 5, -1, 2, 1, 0])
    base = np.array([3, 0, 0, 2, 1, -2])
    change = rank_change(first, base, n_gallery=10)
    assert list(change) == [-3, 5, 10, 0, 0, 0]
    chosen = select_changes(change, first, np.zeros(6), 4)
    # two most worsened, the one improved, topped up with the worst unchanged; sorted by the change
    assert list(chosen) == [2, 1, 3, 0]
