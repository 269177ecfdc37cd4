"""A VPR-methods-evaluation log folder imported with its image names (positions), then retrieved under
protocol=vpr exactly as its main.py computes recalls; positions.csv imports; the cosine warning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import cli, one_error_line
from tests.unit.test_vpr_protocol import RECALL_VALUES, _world, reference_recalls


def _name(e: float, n: float) -> str:
    return f"@{e:.2f}@{n:.2f}@10@S@37.7@-122.4@pano@@@@@@@@.jpg"


@pytest.fixture()
def vpr_log(tmp_path):
    """A log folder as main.py --save_descriptors leaves it, plus the image folders it names."""
    q, g, q_utm, g_utm = _world(5, n_g=120, n_q=40)
    data = tmp_path / "data"
    for folder, utm in (("database", g_utm), ("queries", q_utm)):
        (data / folder / "sub").mkdir(parents=True)
        for i, (e, n) in enumerate(utm):
            # Some in a subfolder: the listing is a recursive sorted glob, as read_images_paths does.
            where = data / folder / ("sub" if i % 3 == 0 else "") / _name(e, n)
            where.write_bytes(b"")
    order = {}
    for folder, utm in (("database", g_utm), ("queries", q_utm)):
        import glob

        paths = sorted(glob.glob(f"{data / folder}/**/*", recursive=True))
        paths = [p for p in paths if p.endswith(".jpg")]
        by_name = {_name(e, n): i for i, (e, n) in enumerate(utm)}
        order[folder] = np.array([by_name[p.rsplit("/", 1)[-1]] for p in paths])
    log = tmp_path / "logs" / "default" / "2026-01-01_00-00-00"
    log.mkdir(parents=True)
    np.save(log / "database_descriptors.npy", g[order["database"]])
    np.save(log / "queries_descriptors.npy", q[order["queries"]])
    (log / "info.log").write_text(
        "2026-01-01 00:00:00 main.py --method=cosplace\n"
        f"2026-01-01 00:00:00 Arguments: Namespace(positive_dist_threshold=25, method='cosplace', "
        f"database_folder='{data / 'database'}', queries_folder='{data / 'queries'}', recall_values=[1, 5, 10, 20])\n"
    )
    return tmp_path, log, (q, g, q_utm, g_utm)


@pytest.mark.slow
def test_vpr_log_import_carries_positions_and_recalls_match(vpr_log):
    tmp, log, (q, g, q_utm, g_utm) = vpr_log
    cache = tmp / "cache"
    r = cli("cache", "import", str(log), "--alias", "v", cache=cache, cwd=tmp)
    assert r.returncode == 0, r.stderr
    for metric in ("l2", "cosine"):
        r = cli(
            "retrieve",
            "query=v.queries",
            "gallery=v.database",
            "protocol=vpr",
            f"retrieve.metric={metric}",
            f"out=r_{metric}",
            "retrieve.report=false",
            cache=cache,
            cwd=tmp,
        )
        assert r.returncode == 0, r.stderr
        m = json.loads((tmp / f"r_{metric}" / "metrics.json").read_text())
        want, _ = reference_recalls(q, g, q_utm, g_utm, cosine=metric == "cosine")
        assert [m[f"R@{n}"] for n in RECALL_VALUES] == pytest.approx(list(want), abs=1e-9)
        assert m["positive_radius_m"] == 25.0 and m["metric"] == metric
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
        # Cosine on rows that are not unit vectors says so, once; l2 does not.
        assert len([w for w in warned if "not normalized" in w]) == (1 if metric == "cosine" else 0), r.stderr


@pytest.mark.slow
def test_positions_csv_import_and_missing_positions(tmp_path):
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    for side, n in (("q", 6), ("g", 10)):
        np.save(tmp_path / f"{side}.npy", rng.normal(size=(n, 8)).astype(np.float32))
        (tmp_path / f"{side}.txt").write_text("".join(f"{side}{i}.jpg\n" for i in range(n)))
        r = cli(
            "cache",
            "import",
            str(tmp_path / f"{side}.npy"),
            "--names",
            str(tmp_path / f"{side}.txt"),
            "--alias",
            side,
            cache=cache,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
    r = cli("retrieve", "query=q", "gallery=g", "protocol=vpr", "out=r0", cache=cache, cwd=tmp_path)
    assert "needs a position" in one_error_line(r) and "positions.csv" in r.stderr
    lat0 = 45.0
    rows = ["name,lat,lon"] + [f"g{i}.jpg,{lat0 + i * 1e-4},7.0" for i in range(10)]
    rows += [f"q{i}.jpg,{lat0 + i * 2e-4},7.0" for i in range(6)]
    (tmp_path / "pos.csv").write_text("\n".join(rows) + "\n")
    for side in ("q", "g"):
        r = cli("cache", "import", str(tmp_path / "pos.csv"), "--alias", side, cache=cache, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    r = cli(
        "retrieve",
        "query=q",
        "gallery=g",
        "protocol=vpr",
        "out=r1",
        "retrieve.report=false",
        cache=cache,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert {"R@1", "R@5", "R@10", "R@20"} == {k for k in m if k.startswith("R@")}
    # 1e-4 degrees of latitude is about 11 m: every query has positives within 25 m.
    assert m["R@10"] == 100.0
    (tmp_path / "bad.csv").write_text("name,lat,lon\ng0.jpg,north,7\n")
    r = cli("cache", "import", str(tmp_path / "bad.csv"), "--alias", "g", cache=cache, cwd=tmp_path)
    assert "line 2" in one_error_line(r)
