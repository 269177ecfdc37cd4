"""The command line as users drive it: real processes, real exit codes, real signals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cvgl.cache.store import CacheStore

from tests.helpers import TINY, cli, one_error_line, start_cli

ROOT = Path(__file__).resolve().parents[2]

@pytest.mark.slow
def test_demo_end_to_end_then_second_demo_reuses_every_entry(tmp_path):
    cache = tmp_path / "cache"
    # The demo's stream 1 / EM-CVGL schedule shortened for the test (an align.params override); the
    # second table (synthetic descriptors) has a test of its own below.
    small = ["--no-world", *TINY, "align.params.epochs=3", "align.params.vec_dim=64"]
    p = cli("demo", *small, "out=first", cache=cache, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "randomly initialised" in p.stdout and "R@1" in p.stdout
    assert "GeoAlign stream 1" in p.stdout and "EM-CVGL" in p.stdout
    first = tmp_path / "first"
    with open(first / "sweep.csv", newline="") as f:
        rows = {r["align.method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"identity", "isms", "geoalign", "fusion", "emcvgl"}
    assert all(r["status"] == "complete" for r in rows.values())
    assert (first / "sweep.md").is_file() and (first / "sweep.png").stat().st_size > 0
    points = {m: first / r["run"] for m, r in rows.items()}
    for m in (json.loads((d / "metrics.json").read_text()) for d in points.values()):
        assert m["protocol"] == "u1652" and m["n_queries"] == 18 and m["n_gallery"] == 9
        assert {"R@1", "R@5", "R@10", "R@1%", "AP"} <= set(m) and 0 <= m["R@1"] <= m["R@5"] <= 100
    assert (points["isms"] / "report.html").is_file()  # each point writes its retrieval report
    run = json.loads((first / "run.json").read_text())
    assert run["status"] == "complete" and run["reused_all"] is False and run["cache_keys"]
    assert set(run["trained"]) == {"isms", "geoalign", "fusion", "emcvgl"}
    assert (points["isms"] / "isms.safetensors").exists()
    assert (points["geoalign"] / "stream1.safetensors").exists()

    p2 = cli("demo", *small, "out=second", cache=cache, cwd=tmp_path, timeout=900)
    assert p2.returncode == 0, p2.stderr
    run2 = json.loads((tmp_path / "second" / "run.json").read_text())
    assert run2["reused_all"] is True  # the backbone was not run
    assert run2["trained"] == []  # no alignment was retrained
    for method in ("isms", "geoalign", "emcvgl"):
        assert run2["demo"][method]["R@1"] == float(rows[method]["R@1"])


def test_unknown_config_key_names_the_closest_one(tmp_path):
    p = cli("extract", "demo", "backbone.layrs=[1]", cache=tmp_path / "c", cwd=tmp_path)
    assert "did you mean 'backbone.layers'" in one_error_line(p)


@pytest.mark.slow
def test_missing_dataset_root_is_one_line_and_leaves_no_entry(tmp_path):
    p = cli(
        "extract",
        "demo",
        "dataset.layout=u1652",
        f"root={tmp_path / 'nowhere'}",
        *TINY,
        cache=tmp_path / "c",
        cwd=tmp_path,
    )
    assert "nowhere" in one_error_line(p)
    assert CacheStore(tmp_path / "c").keys() == []


def _make_u1652(tmp_path: Path) -> Path:
    from cvgl.datasets.synthetic import make_synthetic_u1652

    root = tmp_path / "u1652"
    make_synthetic_u1652(root, n_locations=6, n_distractors=3, views_per_location=3, size=64, seed=1)
    return root


@pytest.mark.slow
def test_unreadable_image_names_the_file_and_keeps_entry_incomplete(tmp_path):
    root = _make_u1652(tmp_path)
    victim = sorted((root / "test" / "query_drone").rglob("*.jpeg"))[10]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 3])
    cache = tmp_path / "c"
    p = cli("extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY, cache=cache, cwd=tmp_path)
    assert victim.name in one_error_line(p)
    store = CacheStore(cache)
    assert store.keys() and not any(store.has(k) for k in store.keys())  # shards kept, none complete
    victim.write_bytes(good)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns))
    p = cli("extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY, cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_empty_gallery_is_refused(tmp_path):
    root = _make_u1652(tmp_path)
    for f in (root / "test" / "gallery_satellite").rglob("*.jpg"):
        f.unlink()
    p = cli(
        "extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY, cache=tmp_path / "c", cwd=tmp_path
    )
    assert "gallery_satellite" in one_error_line(p)


@pytest.mark.slow
def test_kill_mid_extraction_then_rerun_equals_uninterrupted_run(tmp_path):
    root = tmp_path / "u1652"
    from cvgl.datasets.synthetic import make_synthetic_u1652

    make_synthetic_u1652(root, n_locations=30, n_distractors=2, views_per_location=4, size=64, seed=2)
    args = ["extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY]
    clean = tmp_path / "clean"
    assert cli(*args, cache=clean, cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    proc = start_cli(*args, cache=killed, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "entries").glob("*/shard-00001.h5")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = CacheStore(killed)
    assert store.keys(), "extraction never started"
    assert not all(store.has(k) for k in store.keys()), "the run finished before it could be killed"
    assert cli(*args, cache=killed, cwd=tmp_path).returncode == 0

    a, b = CacheStore(clean), store
    assert sorted(a.aliases()) == sorted(b.aliases())
    for alias in a.aliases():
        ea, eb = a.open(alias), b.open(alias)
        assert ea.key == eb.key
        da, la, na = ea.read(dtype=None)
        db, lb, nb = eb.read(dtype=None)
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(la, lb)
        assert na == nb


@pytest.mark.slow
def test_two_concurrent_extractions_of_one_key_compute_once(tmp_path):
    root = _make_u1652(tmp_path)
    cache = tmp_path / "c"
    args = ["extract", "demo", "dataset.layout=u1652", f"root={root}", *TINY]
    procs = [start_cli(*args, f"out=run{i}", cache=cache, cwd=tmp_path, quiet=False) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    logs = [o[1] for o in outs]
    computed = sum(log.count("computed ") for log in logs)
    reused = sum(log.count("reused ") for log in logs)
    assert computed == 4 and reused == 4, logs  # 2 views × 2 layers, each computed exactly once
    store = CacheStore(cache)
    assert all(store.has(k) for k in store.keys()) and len(store.keys()) == 4


@pytest.mark.slow
def test_corrupt_shard_verify_names_it_and_retrieve_refuses(tmp_path):
    cache = tmp_path / "c"
    assert cli("extract", "demo", *TINY, cache=cache, cwd=tmp_path).returncode == 0
    store = CacheStore(cache)
    entry = store.open("demo.gallery_satellite@2")
    import h5py

    shard = entry.shard_paths()[0]
    with h5py.File(shard) as f:
        off = f["descriptors"].id.get_offset()
    raw = bytearray(shard.read_bytes())
    raw[off + 3] ^= 0x55
    shard.write_bytes(raw)
    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2 and "shard-00000.h5" in p.stderr and entry.key[:12] in p.stderr
    p = cli(
        "retrieve",
        "demo",
        "query=demo.query_drone@2",
        "gallery=demo.gallery_satellite@2",
        cache=cache,
        cwd=tmp_path,
    )
    line = one_error_line(p)
    assert "corrupt" in line and "shard-00000.h5" in line


@pytest.mark.slow
def test_retrieve_writes_metrics_and_per_query_csv(tmp_path):
    cache = tmp_path / "c"
    assert cli("extract", "demo", *TINY, cache=cache, cwd=tmp_path).returncode == 0
    p = cli(
        "retrieve",
        "demo",
        "query=demo.query_drone@2",
        "gallery=demo.gallery_satellite@2",
        "protocol=geoalign",
        "out=r",
        cache=cache,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["protocol"] == "geoalign" and m["direction"] == "query_drone->gallery_satellite"
    rows = (tmp_path / "r" / "per_query.csv").read_text().splitlines()
    assert rows[0].startswith("query,label,first_match_rank,ap") and len(rows) == 1 + m["n_queries"]
    # Mismatched dimensions are refused in one line.
    assert (
        cli("cache", "import", str(_npy(tmp_path)), "--alias", "small", cache=cache, cwd=tmp_path).returncode
        == 0
    )
    p = cli("retrieve", "demo", "query=small", "gallery=demo.gallery_satellite@2", cache=cache, cwd=tmp_path)
    assert "shape" in one_error_line(p)


def _npy(tmp_path: Path) -> Path:
    p = tmp_path / "small.npy"
    np.save(p, np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32))
    return p


@pytest.mark.slow
def test_cache_ls_show_export_from_another_directory(tmp_path):
    cache = tmp_path / "c"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert (
        cli("cache", "import", str(_npy(tmp_path)), "--alias", "small", cache=cache, cwd=elsewhere).returncode
        == 0
    )
    p = cli("cache", "ls", cache=cache, cwd=elsewhere)
    assert p.returncode == 0 and "small" in p.stdout
    p = cli("cache", "export", "small", "--format", "npy", "--out", "exp", cache=cache, cwd=elsewhere)
    assert p.returncode == 0
    assert (elsewhere / "exp" / "names.txt").read_text().count("\n") == 5
    p = cli("cache", "show", "nope", cache=cache, cwd=elsewhere)
    assert "no cache entry named 'nope'" in one_error_line(p)


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["backbone.name=dinov3_vitq16", "pooling.name=sum"])
def test_bad_choices_exit_2(tmp_path, bad):
    one_error_line(cli("extract", "demo", *TINY, bad, cache=tmp_path / "c", cwd=tmp_path))


def test_compare_prints_one_table_and_writes_csv_and_markdown(tmp_path):
    for name, r1 in (("a", 12.5), ("b", 40.0)):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"status": "complete"}))
        m = {"protocol": "u1652", "direction": "q->g", "n_queries": 8, "n_gallery": 4,
             "R@1": r1, "R@5": 50.0, "R@10": 75.0, "R@1%": 12.5, "AP": 20.0}
        (d / "metrics.json").write_text(json.dumps(m))
    p = cli("compare", "runs/a", "runs/b", "--out", "cmp", cache=tmp_path / "c", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "12.50" in p.stdout and "40.00" in p.stdout
    csv_text = (tmp_path / "cmp" / "comparison.csv").read_text()
    assert "runs/a" in csv_text and "runs/b" in csv_text
    assert (tmp_path / "cmp" / "comparison.md").exists()
    assert "nowhere" in one_error_line(cli("compare", "nowhere", cache=tmp_path / "c", cwd=tmp_path))
