"""Reports: recall curve PNG, report.html (rendered in headless Chromium), and the cross-run comparison."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from cvgl.retrieve.compare import compare_runs, write_comparison
from cvgl.retrieve.reports import correct_matrix, recall_curve, select_queries, write_recall_png
from cvgl.retrieve.runner import run_retrieval
from PIL import Image

# CI sets it, so there a missing Chromium fails the test instead of skipping it.
REQUIRE_CHROMIUM = "CVGL_REQUIRE_CHROMIUM"
IMAGE_RGB = (230, 0, 230)  # the test images' colour: its pixels in a screenshot mean the thumbnails rendered
GREEN, RED = (0, 180, 0), (224, 0, 0)  # reports.CORRECT_COLOR / WRONG_COLOR


def _entries(tmp_path: Path, *, images: bool, n_q=12, n_g=60, d=16, seed=0) -> CacheStore:
    """Query/gallery entries whose names are image files under a dataset root (or plain names)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((6, d))
    ql, gl = rng.integers(0, 6, n_q), np.arange(n_g) % 6
    q = centers[ql] + 0.8 * rng.standard_normal((n_q, d))
    g = centers[gl] + 0.8 * rng.standard_normal((n_g, d))
    q, g = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (q, g))
    root = tmp_path / "dataset"
    qn = [f"drone/{i:03d}/img.jpeg" for i in range(n_q)]
    gn = [f"satellite/{i:03d}.jpg" for i in range(n_g)]
    extra_q: dict = {"view": "query_drone"}
    extra_g: dict = {"view": "gallery_satellite"}
    if images:
        for n in qn + gn:
            (root / n).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (96, 72), IMAGE_RGB).save(root / n)
        extra_q["root"] = extra_g["root"] = str(root)
    store = CacheStore(tmp_path / "cache")
    store.put_arrays({"r": "q", "seed": seed}, q.astype(np.float32), ql, qn, alias="q", extra=extra_q)
    store.put_arrays({"r": "g", "seed": seed}, g.astype(np.float32), gl, gn, alias="g", extra=extra_g)
    return store


def _run(store: CacheStore, out: Path, *overrides: str) -> dict:
    cfg = load_config(None, ["query=q", "gallery=g", f"out={out}", *overrides])
    run = RunFolder(cfg, "retrieve", cache_root=store.root)
    m = run_retrieval(cfg, store, run)
    run.finish()
    return m


# ----------------------------------------------------------------------------------------------------------
# Pieces


def test_recall_curve_counts_first_match_ranks():
    ks, r = recall_curve(np.array([0, 0, 2, 5, -1]), n_rankable=4)
    np.testing.assert_array_equal(ks, [1, 2, 3, 4])
    np.testing.assert_allclose(r, [40, 40, 60, 60])  # rank 5 is beyond 4 rankable items; -1 never counts


def test_queries_are_half_worst_half_random_listed_worst_first():
    first = np.array([0, 3, -1, 1, 0, 7, 0, 2])
    ap = np.array([1.0, 0.2, 0.0, 0.5, 0.9, 0.1, 1.0, 0.3])
    chosen = select_queries(first, ap, 4, seed=0)
    assert list(chosen[:2]) == [2, 5]  # no match at all, then the match ranked lowest
    assert len(set(chosen)) == 4
    badness = np.where(first[chosen] < 0, 99, first[chosen])
    assert list(badness) == sorted(badness, reverse=True)


def test_correct_matrix_by_label_and_by_row():
    topk = np.array([[0, 1, -1], [2, 1, 0]])
    np.testing.assert_array_equal(
        correct_matrix(topk, np.array([5, 7]), np.array([5, 7, -1]), "u1652"), [[1, 0, 0], [0, 1, 0]]
    )
    np.testing.assert_array_equal(correct_matrix(topk, None, None, "cvft"), [[1, 0, 0], [0, 1, 0]])


def test_recall_png_draws_every_curve(tmp_path):
    ks = np.arange(1, 51)
    p = write_recall_png(
        tmp_path / "c.png", {"a": (ks, np.linspace(20, 90, 50)), "b": (ks, np.linspace(40, 95, 50))}, "t -> g"
    )
    img = np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3)
    assert Image.open(p).size == (720, 460)
    for color in ((0x1F, 0x5F, 0xBF), (0xE0, 0x70, 0x00)):  # the first two curve colours
        assert (np.abs(img.astype(int) - color).sum(1) < 10).sum() > 200


# ----------------------------------------------------------------------------------------------------------
# report.html


def test_report_links_thumbnails_to_the_original_images(tmp_path):
    store = _entries(tmp_path, images=True)
    m = _run(store, tmp_path / "run", "retrieve.topk=5", "retrieve.report_queries=6")
    out = tmp_path / "run"
    assert m["report"] == {"html": "report.html", "recall_curve": "recall_curve.png"}
    page = (out / "report.html").read_text()
    thumbs = sorted((out / "thumbs").iterdir())
    assert thumbs and all(Image.open(t).size[0] <= 112 for t in thumbs)
    assert (
        page.count('class="tile query"') == 6
        and page.count('class="tile ok"') + page.count('class="tile bad"') == 6 * 5
    )
    # Links are relative and point at the original files.
    hrefs = [h.split('"')[0] for h in page.split('<a href="')[1:]]
    dataset = (tmp_path / "dataset").resolve()
    # Each query, its top 5, and the true match of a query whose top 5 holds none.
    assert len(hrefs) == 6 * 6 + page.count('class="tile truth"') and not any(h.startswith(("/", "file:")) for h in hrefs)
    assert all((out / h).resolve().is_file() and dataset in (out / h).resolve().parents for h in hrefs)
    assert Image.open(out / "recall_curve.png").size == (720, 460)


def test_report_without_images_lists_names(tmp_path):
    store = _entries(tmp_path, images=False)
    _run(store, tmp_path / "run", "retrieve.topk=3")
    page = (tmp_path / "run" / "report.html").read_text()
    assert "<img" in page and page.count("<img") == 1  # only the recall curve
    assert "satellite/" in page and 'class="noimg"' in page
    assert not (tmp_path / "run" / "thumbs").exists()


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe:
        return exe
    how = "headless Chromium renders report.html here; install it with `apt-get install chromium` (Debian)"
    if os.environ.get(REQUIRE_CHROMIUM) == "1":
        pytest.fail(f"{how}; {REQUIRE_CHROMIUM}=1 requires it")
    pytest.skip(f"{how} to run this test")


def _screenshot(page: Path, tmp_path: Path, name: str) -> np.ndarray:
    shot = tmp_path / f"{name}.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / f'profile-{name}'}",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        page.resolve().as_uri(),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"Chromium wrote no screenshot (exit {p.returncode}): {p.stderr[-2000:]}"
    return np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)


def _count(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(pixels - rgb).sum(1) < tol).sum())


@pytest.mark.slow
def test_report_renders_thumbnails_with_green_and_red_borders_in_chromium(tmp_path):
    store = _entries(tmp_path, images=True)
    _run(store, tmp_path / "run", "retrieve.topk=8", "retrieve.report_queries=4")
    page = (tmp_path / "run" / "report.html").read_text()
    assert 'class="tile ok"' in page and 'class="tile bad"' in page  # both kinds are on the page
    px = _screenshot(tmp_path / "run" / "report.html", tmp_path, "report")
    assert _count(px, GREEN) > 300, "no green (correct) borders visible"
    assert _count(px, RED) > 300, "no red (wrong) borders visible"
    assert _count(px, IMAGE_RGB) > 2000, "the thumbnails did not render"
    # The check can fail: without the thumbnail files the same page shows no image pixels.
    shutil.rmtree(tmp_path / "run" / "thumbs")
    assert _count(_screenshot(tmp_path / "run" / "report.html", tmp_path, "broken"), IMAGE_RGB) < 50


# ----------------------------------------------------------------------------------------------------------
# pipeline compare


def test_compare_runs_tabulates_every_metrics_json(tmp_path):
    store = _entries(tmp_path, images=False, n_g=120)
    _run(store, tmp_path / "flat", "retrieve.report=false")
    _run(store, tmp_path / "rr", "retrieve.report=false", "retrieve.rerank=k_reciprocal", "retrieve.k1=8")
    demo = tmp_path / "demo"  # a demo-like run: metrics in raw/ and isms/
    for part in ("raw", "isms"):
        (demo / part).mkdir(parents=True)
        shutil.copy(tmp_path / "flat" / "metrics.json", demo / part / "metrics.json")
    rows, md, text = compare_runs([tmp_path / "flat", tmp_path / "rr", demo])
    assert [(Path(r["run"]).name, r["part"]) for r in rows] == [
        ("flat", "."),
        ("rr", "."),
        ("demo", "isms"),
        ("demo", "raw"),
    ]
    assert rows[0]["status"] == "complete" and rows[1]["rerank"].startswith("k1=8")
    assert rows[1]["AP_without_rerank"] == pytest.approx(rows[0]["AP"])
    lines = md.splitlines()
    assert lines[0].startswith("| run | part |") and "R@1 |" in lines[0] and len(lines) == 2 + 4
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 4 and float(parsed[0]["AP"]) == pytest.approx(rows[0]["AP"])
    written = write_comparison(md, text, tmp_path / "cmp")
    assert [p.name for p in written] == ["comparison.md", "comparison.csv"]
    assert json.loads((tmp_path / "flat" / "metrics.json").read_text())["protocol"] == "u1652"
    with pytest.raises(UserError, match="does not exist"):
        compare_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.json"):
        compare_runs([tmp_path / "empty"])
    with pytest.raises(UserError, match="at least one"):
        compare_runs([])
