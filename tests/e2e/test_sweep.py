"""`pipeline sweep` as users drive it: real processes, real worker pools, a real SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cvgl.orchestration.sweep_spec import build_sweep
from PIL import Image

from tests.helpers import TINY, cli, one_error_line, start_cli

# The pipeline's tiny demo, without the HTML reports (thumbnails are not what a sweep test is about).
BASE = ["demo", *TINY, "retrieve.report=false"]


def _sweep(*args: str, cache: Path, cwd: Path) -> tuple[int, str, int]:
    """Run ``pipeline sweep`` as a real process: (exit code, stderr, the sweep process's pid)."""
    proc = start_cli("sweep", *args, cache=cache, cwd=cwd)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, proc.pid


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _without_times(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in ("align_s", "retrieve_s")} for r in rows]


def test_grid_and_zip_expand_into_every_combination_with_their_own_aliases(tmp_path):
    sw = build_sweep(
        "demo",
        [f"out={tmp_path / 's'}"],
        ["align.method=[isms,geoalign]", "seed=[0,1,2]"],
        ["align.params.isms.lr=[0.1,0.01]", "align.params.isms.epochs=[5,7]"],
    )
    combos = {(p.values["align.method"], p.values["seed"], p.values["align.params.isms.lr"]) for p in sw.points}
    assert len(sw.points) == 12 and len(combos) == 12
    for p in sw.points:  # zipped axes vary together
        assert (p.values["align.params.isms.lr"], p.values["align.params.isms.epochs"]) in {(0.1, 5), (0.01, 7)}
        assert p.config.align.params["isms"]["epochs"] == p.values["align.params.isms.epochs"]
        assert p.folder.parent == tmp_path / "s" / "points"
    # Nothing here changes the extraction: one shared extraction alias, and one aligned alias per point.
    assert len({p.group for p in sw.points}) == 1 and len({p.config.extract.alias for p in sw.points}) == 1
    assert len({p.config.align.alias for p in sw.points}) == 12


@pytest.mark.slow
def test_sweep_runs_points_in_workers_records_failures_and_summarises_seeds(tmp_path):
    cache = tmp_path / "cache"
    rc, err, pid = _sweep(
        *BASE,
        "--grid",
        "align.stream1_layer=[2,7]",  # 7 is not an extracted layer: those points fail
        "--grid",
        "seed=[0,1]",
        "sweep.n_jobs=2",
        "out=sw",
        cache=cache,
        cwd=tmp_path,
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "2 of 4 sweep points failed" in lines[0], err
    out = tmp_path / "sw"
    rows = _table(out / "sweep.csv")
    assert len(rows) == 4
    for r in rows:
        assert {"align.stream1_layer", "seed", "R@1", "R@5", "R@10", "R@1%", "AP", "align_s", "run"} <= set(r)
        run = json.loads((out / r["run"] / "run.json").read_text())
        if r["align.stream1_layer"] == "7":
            assert r["status"] == "failed" and "stream1_layer=7" in r["error"] and r["R@1"] == ""
            assert run["status"] == "failed"
        else:
            assert r["status"] == "complete" and 0 <= float(r["R@1"]) <= float(r["R@5"]) <= 100
            assert len(r["query_key"]) == 64 and float(r["align_s"]) >= 0
            m = json.loads((out / r["run"] / "metrics.json").read_text())
            assert float(r["AP"]) == pytest.approx(m["AP"])
            # An ordinary run, in a worker process whose torch threads fit the cores beside the others.
            assert run["status"] == "complete" and run["command"][:2] == ["pipeline", "run"]
            assert run["worker"]["pid"] != pid
            assert run["worker"]["torch_threads"] == max(1, _cores() // 2)
    seeds = _table(out / "sweep_seeds.csv")
    ok = next(s for s in seeds if s["align.stream1_layer"] == "2")
    assert ok["n_seeds"] == "2" and float(ok["R@1_std"]) >= 0
    assert "mean ± std over seeds" in (out / "sweep.md").read_text()
    with Image.open(out / "sweep.png") as im:
        assert im.width > 0 and im.height > 0
    # `pipeline compare` takes the sweep folder: one row per complete point.
    c = cli("compare", "sw", "--out", "cmp", cache=cache, cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    assert len(_table(tmp_path / "cmp" / "comparison.csv")) == 2


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_table_of_an_uninterrupted_one(tmp_path):
    # One dataset folder for both caches: equal image lists give equal cache keys in both.
    args = [
        *BASE,
        f"root={tmp_path / 'data'}",
        "align.params.isms.epochs=6",
        "--grid",
        # Three points: after the first completes, two are left to run, so a fast machine cannot
        # finish the sweep between that moment and the kill.
        "seed=[0,1,2]",
        "sweep.n_jobs=1",
    ]
    full = cli("sweep", *args, "out=full", cache=tmp_path / "c1", cwd=tmp_path)
    assert full.returncode == 0, full.stderr

    proc = start_cli(
        "sweep", *args, "out=part", cache=tmp_path / "c2", cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = tmp_path / "part" / "points" / "000" / "run.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if first.exists() and json.loads(first.read_text() or "{}").get("status") == "complete":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "part" / "sweep.csv").exists()  # no table that looks finished
    kept = first.read_bytes()

    again = cli("sweep", *args, "out=part", cache=tmp_path / "c2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert first.read_bytes() == kept  # the finished point was reused, not run again
    assert _without_times(_table(tmp_path / "part" / "sweep.csv")) == _without_times(
        _table(tmp_path / "full" / "sweep.csv")
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--grid", "align.stream1_layr=[1,2]"], "did you mean 'align.stream1_layer'"),
        (["--grid", "seed=[]"], "sweep axis seed is empty"),
        (["--zip", "seed=[0,1]", "--zip", "align.params.isms.lr=[0.1]"], "same number of values"),
        (["--grid", "align.stream1_layer=[3,many]"], "align.stream1_layer must be an integer"),
        (
            ["--grid", "seed=[0,1]", "sweep.backend=dask", "sweep.scheduler=tcp://127.0.0.1:9", "sweep.timeout=1"],
            "cannot reach the Dask scheduler",
        ),
    ],
    ids=["unknown-key", "empty-axis", "zip-lengths", "bad-value", "no-scheduler"],
)
@pytest.mark.slow
def test_bad_sweep_input_is_one_line_and_writes_nothing(tmp_path, extra, expected):
    if "sweep.backend=dask" in extra:
        pytest.importorskip("distributed")
    p = cli("sweep", *BASE, *extra, "out=sw", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert expected in one_error_line(p)
    assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_dask_backend_runs_points_on_a_local_cluster_of_worker_processes(tmp_path):
    pytest.importorskip("distributed")
    rc, err, pid = _sweep(
        *BASE,
        "--grid",
        "seed=[0,1]",
        "sweep.backend=dask",
        "sweep.n_jobs=2",
        "out=sw",
        cache=tmp_path / "c",
        cwd=tmp_path,
    )
    assert rc == 0, err
    rows = _table(tmp_path / "sw" / "sweep.csv")
    assert [r["status"] for r in rows] == ["complete", "complete"]
    for r in rows:
        run = json.loads((tmp_path / "sw" / r["run"] / "run.json").read_text())
        assert run["status"] == "complete" and run["worker"]["pid"] != pid  # a Dask worker process ran it
