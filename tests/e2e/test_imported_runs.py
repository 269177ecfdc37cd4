"""`pipeline run` and `pipeline sweep` on imported entries: named alignment inputs need no dataset and
skip extraction; named retrieval inputs need no alignment either."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import cli
from tests.unit.test_geoalign_release import BACKBONE, write_release

# GeoAlign stream 1, small enough for seconds on one core (the fake release's layer width is 24).
STREAM1 = [
    "align.method=geoalign",
    "align.query=[ga.dro@28]",
    "align.gallery=[ga.sat@28]",
    "align.params={epochs: 2, vec_dim: 12, num_chunks: 3, nhead: 1, num_experts: 2, batch_size: 8, dro_num: 2}",
    "retrieve.report=false",
]


@pytest.fixture()
def imported(tmp_path):
    root = tmp_path / "GeoAlign"
    write_release(root)
    cache = tmp_path / "cache"
    r = cli(
        "cache", "import", str(root / "feats_test" / BACKBONE), "--alias", "ga", cache=cache, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    return tmp_path, cache


@pytest.mark.slow
def test_sweep_over_lr_and_seed_on_imported_entries(imported):
    tmp, cache = imported
    r = cli(
        "sweep",
        *STREAM1,
        "out=sw",
        "sweep.n_jobs=1",
        "--grid",
        "align.params.lr=[0.001,0.0002]",
        "--grid",
        "seed=[0,1]",
        cache=cache,
        cwd=tmp,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    assert "dataset.root" not in r.stderr
    rows = list(csv.DictReader(open(tmp / "sw" / "sweep.csv")))
    assert len(rows) == 4 and all(row["status"] == "complete" for row in rows)
    assert {row["align.params.lr"] for row in rows} == {"0.001", "0.0002"}
    assert len({row["query_key"] for row in rows}) == 4  # each point aligned its own entries
    run = json.loads((tmp / "sw" / "points" / "000" / "run.json").read_text())
    keys = run["cache_keys"]
    assert {"parent:ga.dro@28", "parent:ga.sat@28"} <= set(keys)  # aligned from the imported entries
    assert run["timings"]["extract_s"] < 1.0  # nothing extracted


@pytest.mark.slow
def test_run_on_imported_entries_skips_extraction(imported):
    tmp, cache = imported
    r = cli("run", *STREAM1, "out=r1", cache=cache, cwd=tmp)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp / "r1" / "metrics.json").read_text())
    assert m["query"].endswith(".query_drone") and m["gallery"].endswith(".gallery_satellite")
    # Named retrieval inputs: no alignment, no extraction.
    r = cli(
        "run",
        "query=ga.dro@28",
        "gallery=ga.sat@28",
        "protocol=geoalign",
        "out=r2",
        "retrieve.report=false",
        cache=cache,
        cwd=tmp,
    )
    assert r.returncode == 0, r.stderr
    m2 = json.loads((tmp / "r2" / "metrics.json").read_text())
    assert m2["query"] == "ga.dro@28" and "R@1" in m2
