"""The Python API (``import pipeline``) and what the command line shows when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cvgl import pipeline
from cvgl.core.console import PlainProgress

from tests.helpers import ROOT, TINY, cli, one_error_line


def _readme_python_api_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's Python API section has no python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_api_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_python_api_example(), encoding="utf-8")
    env = {
        **os.environ,
        "PIPELINE_CACHE_DIR": str(tmp_path / "default-cache"),
        "OMP_NUM_THREADS": "1",
    }
    p = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""  # the API shows no progress unless asked to
    metrics = json.loads((tmp_path / "runs" / "api" / "metrics.json").read_text())
    assert metrics["query"] == "demo.isms.query_drone" and metrics["n_queries"] == 18
    assert json.loads((tmp_path / "runs" / "raw" / "run.json").read_text())["status"] == "complete"
    assert any((tmp_path / "cache" / "entries").iterdir())
    assert not (tmp_path / "default-cache").exists()  # cache_dir= is the cache used


class Recorder:
    """A Progress that keeps every report."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.epochs: list[tuple[str, int, int]] = []

    def __call__(self, desc, done, total, info=None) -> None:
        self.calls.append((desc, done, total))

    def log(self, desc, epoch, epochs, losses) -> None:
        self.epochs.append((desc, epoch, epochs))


@pytest.mark.slow
def test_stages_report_through_one_progress_and_return_entries_and_metrics(tmp_path):
    cache = tmp_path / "cache"
    cfg = pipeline.load_config(
        "demo", [*TINY, f"out={tmp_path / 'run'}", "retrieve.index=ivf_flat", "retrieve.nlist=2"]
    )
    rec = Recorder()
    res = pipeline.run(cfg, cache_dir=cache, progress=rec)

    assert res.run_dir == tmp_path / "run"
    assert json.loads((res.run_dir / "run.json").read_text())["status"] == "complete"
    assert {e.alias for e in res.entries} == {
        f"demo.{v}@{layer}" for v in ("query_drone", "gallery_satellite") for layer in (1, 2)
    }
    assert {e.alias for e in res.aligned} == {"demo.isms.query_drone", "demo.isms.gallery_satellite"}
    assert res.metrics == json.loads((res.run_dir / "metrics.json").read_text())
    # Extraction, training and the index build all reported, each to its end.
    finals = {desc: (done, total) for desc, done, total in rec.calls}
    assert finals["extract query_drone"] == (18, 18)
    assert finals["indexing gallery (ivf_flat)"] == (9, 9)
    assert ("align isms", 3, 3) in rec.epochs

    again = pipeline.extract(cfg, cache_dir=cache)
    assert again.entries and all(e.reused for e in again.entries)
    assert again.metrics is None and not again.aligned


@pytest.mark.slow
def test_open_entry_by_alias_or_key_streams_the_same_rows_it_reads(tmp_path, tiny_config):
    cache = tmp_path / "cache"
    pipeline.extract(tiny_config, cache_dir=cache)

    entry = pipeline.open_entry("demo.query_drone@2", cache_dir=cache)
    desc, labels, names = entry.read()
    assert desc.shape == (18, 64) and desc.dtype == np.float32 and labels.shape == (18,) and len(names) == 18
    chunks = list(entry.iter_chunks(with_names=True))
    assert len(chunks) == 3  # extract.shard_rows=8: the entry streams in three shards
    assert np.array_equal(np.concatenate([c[0] for c in chunks]), desc)
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), labels)
    assert [n for c in chunks for n in c[2]] == names
    by_key = pipeline.open_entry(entry.key[:10], cache_dir=cache)
    assert by_key.key == entry.key and np.array_equal(by_key.read()[0], desc)

    with pytest.raises(pipeline.UserError):
        pipeline.open_entry("demo.nothing@2", cache_dir=cache)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["u1652", "geoalign", "cvft"])
def test_evaluate_on_arrays_gives_the_metrics_retrieve_writes(tmp_path, protocol):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((12, 16)).astype(np.float32)
    g = q + 0.8 * rng.standard_normal((12, 16)).astype(np.float32)  # row i of g is query i's match
    labels = np.arange(12)
    cache = tmp_path / "cache"
    for name, x in (("q", q), ("g", g)):
        np.save(tmp_path / f"{name}.npy", x)
        np.save(tmp_path / f"{name}_labels.npy", labels)
        p = cli(
            "cache", "import", str(tmp_path / f"{name}.npy"), "--labels", str(tmp_path / f"{name}_labels.npy"),
            "--alias", name, cache=cache, cwd=tmp_path,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
    p = cli("retrieve", "query=q", "gallery=g", f"protocol={protocol}", "out=r", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    written = json.loads((tmp_path / "r" / "metrics.json").read_text())

    m = pipeline.evaluate(q, labels, g, labels, protocol=protocol)
    keys = ["R@1", "R@5", "R@10", "R@1%"] + ([] if protocol == "cvft" else ["AP"])
    assert {k: m[k] for k in keys} == pytest.approx({k: written[k] for k in keys})
    # The gallery as a cache entry, streamed, gives the same numbers.
    streamed = pipeline.evaluate(
        q, labels, pipeline.open_entry("g", cache_dir=cache), None, protocol=protocol
    )
    assert {k: streamed[k] for k in keys} == pytest.approx({k: m[k] for k in keys})


def test_evaluate_under_vigor_counts_semi_positives_in_hit_rate():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    g = np.array([[0.9, 0.436], [1.0, 0.0], [0.0, 1.0]], np.float32)
    # Query 0's positive (tile 0) is beaten only by tile 1, one of its semi-positives.
    m = pipeline.evaluate(
        q,
        np.array([0, 2]),
        g,
        np.array([0, 1, 2]),
        "vigor",
        ks=(1,),
        semi_positives=np.array([[1, -1, -1], [-1, -1, -1]]),
    )
    assert m["R@1"] == pytest.approx(50.0) and m["hit_rate"] == pytest.approx(100.0)


def test_evaluate_refuses_an_all_zero_row_in_one_line():
    q = np.zeros((2, 4), np.float32)
    with pytest.raises(pipeline.UserError) as e:
        pipeline.evaluate(q, np.arange(2), np.eye(4, dtype=np.float32), np.arange(4))
    assert "all-zero" in str(e.value) and "\n" not in str(e.value)


def test_failed_stage_call_raises_user_error_and_marks_its_run_folder_failed(tmp_path, tiny_config):
    with pytest.raises(pipeline.UserError):
        pipeline.retrieve(tiny_config, query="absent.q", gallery="absent.g", cache_dir=tmp_path / "cache")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "failed" and "absent" in run["error"]


def test_load_config_names_the_closest_key_of_a_typo():
    with pytest.raises(pipeline.UserError, match="did you mean 'backbone.layers'"):
        pipeline.load_config("demo", ["backbone.layrs=[1]"])


# -- output that is not a terminal --------------------------------------------------------------------
def _loud(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The command line without --quiet, stderr into a pipe as in a CI log."""
    no_terminal = dict.fromkeys(("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"))
    return cli(*args, cache=cache, cwd=cwd, quiet=False, env=no_terminal, timeout=600)


@pytest.mark.slow
def test_progress_into_a_pipe_is_plain_lines_not_bars(tmp_path):
    p = _loud(
        "run", "demo", *TINY, "retrieve.index=ivf_flat", "retrieve.nlist=2", "out=r",
        cache=tmp_path / "c", cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    err = p.stderr
    for bar_char in ("━", "\r", "\x1b[", "█"):
        assert bar_char not in err, repr(err)
    lines = err.splitlines()
    for task, count in (("extract query_drone", "18/18"), ("extract gallery_satellite", "9/9"),
                        ("align isms", "3/3"), ("indexing gallery (ivf_flat)", "9/9")):  # fmt: skip
        mine = [ln for ln in lines if ln.startswith(f"{task}: ")]
        assert mine, err
        assert count in mine[-1] and "(100 %)" in mine[-1], err
        assert len(mine) == len(set(mine)), err  # no line written twice
    assert re.search(r"^extract query_drone: 18/18 \(100 %\), [\d,.]+ it/s, [\d.]+ s$", err, flags=re.M), err

    quiet = cli("run", "demo", *TINY, "out=r2", cache=tmp_path / "c", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


@pytest.mark.slow
def test_an_error_into_a_pipe_is_still_one_line(tmp_path):
    p = _loud("retrieve", "demo", *TINY, "query=absent", "gallery=absent", cache=tmp_path / "c", cwd=tmp_path)
    assert "absent" in one_error_line(p)
    assert len(p.stderr.splitlines()) == 1


def test_plain_progress_writes_a_long_task_every_few_seconds_and_its_final_line():
    now = [0.0]
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=5.0, clock=lambda: now[0])
    for done in range(0, 1001):  # 1,000 items over 100 seconds
        progress("extract gallery", done, 1000)
        now[0] += 0.1
    progress.close(ok=True)
    assert 18 <= len(lines) <= 21  # about one line per 5 seconds, not one per update
    assert lines[-1].startswith("extract gallery: 1,000/1,000 (100 %), 10.0 it/s")


def test_plain_progress_keeps_a_quick_task_silent_when_the_command_fails():
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=5.0, clock=lambda: 0.0)
    progress("extract gallery", 0, 9)
    progress("extract gallery", 9, 9)
    progress("extract query", 3, 18)
    progress.close(ok=False)
    assert lines == []
