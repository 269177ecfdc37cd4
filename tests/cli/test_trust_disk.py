"""Trust under pressure: concurrent dataset generation, a full disk, reruns into a run folder, checkpoints.

Real processes on real files. The full-disk cases mount a small tmpfs (root only); where ``mount`` is
not permitted they skip and say so.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, cli, one_error_line, start_cli

# TINY's dataset, a little larger so that generating it takes long enough for two processes to overlap.
RACE = [*TINY, "dataset.synthetic.n_locations=24", "dataset.synthetic.n_distractors=8"]


def _start(*args: str, cache: Path, cwd: Path) -> subprocess.Popen:
    return start_cli(*args, cache=cache, cwd=cwd)


def _leftovers(root: Path) -> list[str]:
    """Temporary or partial files anywhere under ``root`` (what a crashed writer would leave)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if ".tmp" in p.name or p.name.endswith(".part")
    )


def _complete_entries(cache: Path) -> set[str]:
    return {p.parent.name for p in (cache / "entries").glob("*/manifest.json")}


# -------------------------------------------------------------------------------- generation lock
@pytest.mark.slow
def test_concurrent_extract_demo_generates_the_dataset_once_and_both_get_the_same_keys(tmp_path):
    cache = tmp_path / "cache"
    first = _start("extract", "demo", *RACE, "out=a", cache=cache, cwd=tmp_path)
    time.sleep(0.5)
    second = _start("extract", "demo", *RACE, "out=b", cache=cache, cwd=tmp_path)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    for p, (_, err) in zip((first, second), outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    keys = [json.loads((tmp_path / d / "run.json").read_text())["cache_keys"] for d in ("a", "b")]
    assert keys[0] and keys[0] == keys[1]
    # One dataset folder, complete, and no temporary generation folder left beside it.
    datasets = sorted(p.name for p in (cache / "datasets").iterdir() if not p.name.endswith(".lock"))
    assert len(datasets) == 1 and not datasets[0].startswith("."), datasets
    marker = json.loads((cache / "datasets" / datasets[0] / "synthetic-u1652.json").read_text())
    assert marker["complete"] is True
    assert _leftovers(cache) == []


@pytest.mark.slow
def test_regenerating_with_other_parameters_never_deletes_files_it_did_not_write(tmp_path):
    data = tmp_path / "data"
    p = cli("extract", "demo", *TINY, f"root={data}", "out=a", cache=tmp_path / "c", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (data / "notes.txt").write_text("mine")
    p = cli(
        "extract", "demo", *TINY, "dataset.synthetic.seed=3", f"root={data}", "out=b",
        cache=tmp_path / "c", cwd=tmp_path,
    )  # fmt: skip
    assert str(data) in one_error_line(p)
    assert (data / "notes.txt").read_text() == "mine"
    assert json.loads((data / "synthetic-u1652.json").read_text())["params"]["seed"] == 0


# -------------------------------------------------------------------------------- a full disk
@pytest.fixture()
def small_disk(tmp_path):
    """A 5 MB tmpfs at ``tmp_path/small`` (unmounted afterwards)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up here (needs root): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> None:
    """Fill the file system at ``mnt`` completely, with one filler file."""
    with open(mnt / "filler", "wb", buffering=0) as fh:  # unbuffered: nothing left to flush at close
        for block in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            try:
                while True:
                    fh.write(b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    assert (mnt / "filler").stat().st_size > 0


def _assert_no_space(p: subprocess.CompletedProcess) -> None:
    line = one_error_line(p)
    assert "no space left on the device writing" in line, line


@pytest.mark.slow
def test_full_disk_while_generating_the_dataset_is_one_line_and_leaves_no_partial_dataset(tmp_path, small_disk):
    _fill(small_disk)
    os.truncate(small_disk / "filler", 5 * 1024 * 1024 - 256 * 1024)  # room for a part of the dataset only
    cache = small_disk / "cache"
    p = cli("extract", "demo", *TINY, "dataset.synthetic.n_locations=40", "out=run", cache=cache, cwd=tmp_path)
    _assert_no_space(p)
    # Nothing that looks like a dataset (complete or temporary) and no entry is left.
    left = [q.name for q in (cache / "datasets").iterdir() if not q.name.endswith(".lock")]
    assert left == []
    assert _complete_entries(cache) == set()
    assert _leftovers(cache) == []
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_full_disk_while_extracting_is_one_line_and_no_entry_looks_complete(tmp_path, small_disk):
    cache = small_disk / "cache"
    args = ["extract", "demo", *TINY, f"root={tmp_path / 'data'}"]  # the images live on the big disk
    for room in (0, 24 * 1024):  # failing on the first write, and part-way through the shards
        (small_disk / "filler").unlink(missing_ok=True)
        _fill(small_disk)
        os.truncate(small_disk / "filler", (small_disk / "filler").stat().st_size - room)
        p = cli(*args, f"out=run{room}", cache=cache, cwd=tmp_path)
        _assert_no_space(p)
        assert _complete_entries(cache) == set(), "an entry was marked complete on a full disk"
        assert _leftovers(cache) == []
    # With space again, the same command completes (and resumes what was complete).
    (small_disk / "filler").unlink()
    p = cli(*args, "out=ok", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert len(_complete_entries(cache)) == 4


@pytest.mark.slow
def test_full_disk_while_aligning_or_in_the_run_folder_is_one_line(tmp_path, small_disk):
    cache = small_disk / "cache"
    data = ["demo", *TINY, f"root={tmp_path / 'data'}"]
    p = cli("extract", *data, "out=x", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    extracted = _complete_entries(cache)
    _fill(small_disk)
    # Alignment: training state (torch.save), checkpoints (safetensors) and aligned entries go to the cache.
    p = cli("align", *data, "out=al", cache=cache, cwd=tmp_path)
    _assert_no_space(p)
    assert _complete_entries(cache) == extracted
    assert _leftovers(cache) == []
    assert not list((cache / "models").rglob("model-files.json"))
    # A run folder on the full disk: refused in one line, and no run.json claims anything.
    (tmp_path / "big-cache").mkdir()
    p = cli("extract", *data, f"out={small_disk / 'run'}", cache=tmp_path / "big-cache", cwd=tmp_path)
    _assert_no_space(p)
    assert not (small_disk / "run" / "run.json").exists()
    assert _leftovers(small_disk) == []


# -------------------------------------------------------------------------------- run folders
@pytest.mark.slow
def test_failed_rerun_into_the_same_folder_leaves_no_earlier_results_and_compare_skips_it(tmp_path):
    cache = tmp_path / "cache"
    p = cli("run", "demo", *TINY, "out=run", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
    (tmp_path / "run" / "notes.txt").write_text("my notes")
    p = cli("run", "demo", *TINY, "out=ok", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr

    # The rerun fails after its run folder exists (the aligned inputs name no entry).
    p = cli("run", "demo", *TINY, "align.query=[missing.a,missing.b]", "out=run", cache=cache, cwd=tmp_path)
    assert "missing.a" in one_error_line(p)
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    left = sorted(str(q.relative_to(run)) for q in run.rglob("*") if q.is_file())
    assert not [f for f in left if f.endswith(("metrics.json", "report.html", "per_query.csv"))], left
    assert not (run / "isms.safetensors").exists()
    assert (run / "notes.txt").read_text() == "my notes"  # not the tool's: kept

    p = cli("compare", "run", cache=cache, cwd=tmp_path)
    assert "no complete run" in one_error_line(p)
    p = cli("compare", "ok", "run", "--out", "cmp", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    table = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    assert len(table) == 1 + 1  # header + the complete run only
    assert all(row.startswith("ok,") for row in table[1:])


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.slow
def test_checkpoints_live_in_the_cache_and_a_rerun_that_reuses_the_entries_links_them(tmp_path):
    cache = tmp_path / "cache"
    p = cli("run", "demo", *TINY, "out=first", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "first" / "run.json").read_text())
    model_dir = cache / "models" / info["alignment"]["run_digest"]
    kept = model_dir / "isms.safetensors"
    assert kept.is_file() and (model_dir / "isms.json").is_file() and (model_dir / "history.jsonl").is_file()
    assert (tmp_path / "first" / "isms.safetensors").read_bytes() == kept.read_bytes()
    trained_at = kept.stat().st_mtime_ns

    p = cli("run", "demo", *TINY, "out=second", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    second = json.loads((tmp_path / "second" / "run.json").read_text())
    assert kept.stat().st_mtime_ns == trained_at  # the aligned entries were reused: nothing retrained
    assert (tmp_path / "second" / "isms.safetensors").read_bytes() == kept.read_bytes()
    assert (tmp_path / "second" / "isms.json").is_file() and (tmp_path / "second" / "history.jsonl").is_file()
    assert second["model"]["dir"] == str(model_dir)
