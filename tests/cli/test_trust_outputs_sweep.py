"""A sweep touches only its own outputs, validates every point before it runs, is locked while it
runs, and its workers end with it: real `pipeline sweep` processes."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, cli, one_error_line

BASE = ["demo", *TINY, "retrieve.report=false"]


def _table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_bad_method_in_any_point_is_one_line_before_anything_runs(tmp_path):
    cache = tmp_path / "c"
    p = cli("sweep", *BASE, "--grid", "align.method=[identity,bogus]", "out=sw", cache=cache, cwd=tmp_path, quiet=False)
    line = one_error_line(p)
    assert "bogus" in line and "align.method" in line
    assert not (tmp_path / "sw").exists() and not (cache / "entries").exists()  # no extraction ran


def test_a_bad_param_in_any_point_is_one_line_before_anything_runs(tmp_path):
    cache = tmp_path / "c"
    p = cli("sweep", *BASE, "align.method=geoalign", "--grid", "align.params=[{epochs: 2},{bogus_param: 1}]",
            "out=sw2", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "bogus_param" in line
    assert not (tmp_path / "sw2").exists()


@pytest.mark.parametrize("address", ["notaurl", "http://127.0.0.1:80", "tcp://host:notaport", "tcp://"])
def test_a_bad_scheduler_is_exactly_one_line_and_waits_for_nothing(tmp_path, address):
    p = cli("sweep", *BASE, "--grid", "seed=[0,1]", "sweep.backend=dask", f"sweep.scheduler={address}", "out=sw",
            cache=tmp_path / "c", cwd=tmp_path, quiet=False)
    line = one_error_line(p)
    assert "sweep.scheduler" in line and "within" not in line and " s " not in line
    assert not (tmp_path / "sw").exists()


def test_a_users_table_files_survive_and_refuse_the_sweep(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    (out / "sweep.csv").write_text("my,own\n1,2\n")
    (out / "sweep.md").write_text("# my notes\n")
    line = one_error_line(cli("sweep", *BASE, "--grid", "seed=[0,1]", "out=sw", cache=tmp_path / "c", cwd=tmp_path))
    assert "sweep.csv" in line and "not written by" in line
    assert (out / "sweep.csv").read_text() == "my,own\n1,2\n" and (out / "sweep.md").read_text() == "# my notes\n"
    assert not (out / "points").exists() and not (tmp_path / "c" / "entries").exists()


def test_a_running_sweep_locks_its_folder(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    fd = os.open(out / ".sweep.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the first sweep holds it
    try:
        line = one_error_line(cli("sweep", *BASE, "--grid", "seed=[0,1]", "out=sw", cache=tmp_path / "c", cwd=tmp_path))
    finally:
        os.close(fd)
    assert "another sweep is running" in line
    assert not (out / "points").exists() and not (tmp_path / "c" / "entries").exists()  # nothing trained twice


@pytest.mark.slow
def test_a_point_folder_with_foreign_files_fails_alone_untouched_and_the_table_is_written(tmp_path):
    cache = tmp_path / "c"
    mine = tmp_path / "sw" / "points" / "000"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "notes.txt").write_text("mine\n")
    args = ["sweep", *BASE, "--grid", "seed=[0,1]", "sweep.n_jobs=1", "out=sw"]
    line = one_error_line(cli(*args, cache=cache, cwd=tmp_path))
    assert "1 of 2 sweep points failed" in line
    assert (mine / "config.yaml").read_text() == "my: own config\n" and (mine / "notes.txt").read_text() == "mine\n"
    assert sorted(os.listdir(mine)) == ["config.yaml", "notes.txt"]
    rows = _table(tmp_path / "sw" / "sweep.csv")
    assert [r["status"] for r in rows] == ["failed", "complete"]
    assert "did not write" in rows[0]["error"]

    # The user moves their files away: the rerun recognises its own table files and replaces them,
    # reuses the finished point and runs the other.
    for f in ("config.yaml", "notes.txt"):
        (mine / f).unlink()
    p = cli(*args, cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert [r["status"] for r in _table(tmp_path / "sw" / "sweep.csv")] == ["complete", "complete"]
    record = json.loads((tmp_path / "sw" / "sweep-files.json").read_text())
    assert set(record["files"]) >= {"sweep.csv", "sweep.md", "sweep.png"}

    # A point folder left by a different run of the tool is emptied of the tool's files only.
    (tmp_path / "sw" / "points" / "001" / "mine.txt").write_text("mine\n")
    p = cli("sweep", *BASE, "--grid", "seed=[0,1]", "align.isms.epochs=2", "sweep.n_jobs=1", "out=sw",
            cache=cache, cwd=tmp_path)
    assert p.returncode == 2
    rows = _table(tmp_path / "sw" / "sweep.csv")
    assert [r["status"] for r in rows] == ["complete", "failed"] and "mine.txt" in rows[1]["error"]
    assert (tmp_path / "sw" / "points" / "001" / "mine.txt").read_text() == "mine\n"
    assert (tmp_path / "sw" / "points" / "001" / "run.json").is_file()  # nothing of that folder was removed


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_sweep_ends_its_workers(tmp_path):
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(tmp_path / "c"), "OMP_NUM_THREADS": "1"}
    # Long trainings, so both workers are mid-point when the sweep is killed.
    cmd = [sys.executable, "-m", "cvgl.pipeline", "--quiet", "sweep", *BASE, "align.isms.epochs=100000",
           "--grid", "seed=[0,1]", "sweep.n_jobs=2", "out=sw"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = [tmp_path / "sw" / "points" / f"00{i}" / "run.json" for i in (0, 1)]
    workers: list[int] = []
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if all(r.exists() for r in runs):
                pids = {json.loads(r.read_text() or "{}").get("worker", {}).get("pid") for r in runs}
                if None not in pids:
                    workers = sorted(pids)
                    break
            time.sleep(0.1)
        assert proc.poll() is None and len(workers) == 2, "the workers never started their points"
        assert all(w in _children(proc.pid) for w in workers)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:  # never leave them behind, even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived the sweep process"
