"""Running a sweep: every point an ordinary run, extraction first, then the points in parallel.

1. Points whose run folder already holds a complete run of the same config are reused as they are
   (a killed sweep, run again, trains nothing it had finished).
2. The extractions the remaining points need run first, in this process, once per distinct set of
   extraction settings (the cache's lock keeps one writer per key in any case). A point whose
   extraction fails is recorded as failed with the one-line error.
3. The other points run in parallel through joblib: local ``loky`` worker processes, or the workers of
   a Dask cluster (``sweep.backend=dask``; ``sweep.scheduler=tcp://…`` or a LocalCluster). Torch threads
   per point are set so that points × threads never exceeds the cores. Each point is a ``run`` in
   ``DIR/points/<n>/`` (config.yaml, run.json, metrics.json, reports); its alignment and retrieval
   reuse the cache like any run.
4. ``DIR/sweep.csv`` and ``DIR/sweep.md`` (one row per point), with ``seed`` as an axis also
   ``DIR/sweep_seeds.csv`` (mean ± std over seeds), and ``DIR/sweep.png`` (:mod:`sweep_plot`: a panel
   per metric, seed as error bars).
   They are removed when a sweep starts and written when it ends, so a table on disk is always a
   finished sweep's.

What a sweep may touch: it holds ``DIR/.sweep.lock`` (an exclusive ``flock``) while it runs, so a
second sweep into the same folder is refused in one line. ``DIR/sweep-files.json`` records the
checksum of every table file the tool wrote; a table file it does not list (a user's ``sweep.csv``)
refuses the sweep before anything runs. A point folder is emptied only of the files an earlier run
of the tool wrote there (core/run_folder.py); a point folder holding anything else fails that point
alone, untouched, and the other points go on. Loky workers end with the sweep's process
(:func:`bind_to_parent`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from cvgl.configs.schema import Config, to_dict
from cvgl.core.atomic import write_bytes_atomic, write_json_atomic
from cvgl.core.bounded_yaml import load_yaml
from cvgl.core.console import metric_cell
from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.errors import UserError
from cvgl.core.outputs import check_apart
from cvgl.core.run_folder import clear_run_folder
from cvgl.core.threads import available_cores
from cvgl.orchestration.sweep_spec import Point, Sweep, display
from cvgl.orchestration.worker_memory import keep_worker_on_memory_growth

METRICS = ("R@1", "R@5", "R@10", "R@1%", "AP")
TABLE_FILES = ("sweep.csv", "sweep.md", "sweep_seeds.csv", "sweep.png")
RECORD_FILE = "sweep-files.json"  # the table files this tool wrote, with their checksums
LOCK_FILE = ".sweep.lock"
_RECORD_TAG = "cvgl-pipeline sweep table files"
ProgressFn = Callable[..., None]  # (description, done, total, info=None)


@dataclass
class PointTask:
    """What a worker needs to run one point (picklable: sent to loky or Dask workers)."""

    index: int
    config: Config
    values: dict[str, Any]
    command: list[str]
    cache_root: str
    threads: int | None  # torch threads; None = this worker machine's cores / the Dask threads on it
    host_threads: dict[str, int] | None = None  # Dask threads per worker host (an existing cluster)
    parent_pid: int | None = None  # a local worker's sweep process: the worker ends when it dies


def cores() -> int:
    """CPU cores this process may use: its affinity mask and cgroup CPU quota (core/threads.py)."""
    return available_cores()


def plan_jobs(n_jobs: int, n_points: int, n_cores: int) -> tuple[int, int]:
    """(points at once, torch threads per point): ``n_jobs`` 0 = one per core; jobs × threads ≤ cores."""
    jobs = max(1, min(n_jobs or n_cores, max(1, n_points)))
    return jobs, max(1, n_cores // jobs)


def one_line(e: BaseException) -> str:
    """An exception as the one line a table cell can hold."""
    text = str(e).strip().splitlines()
    if isinstance(e, UserError):
        return text[0] if text else "error"
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- resume ---------------------------------------------------------------------------------------------
def _comparable(cfg_dict: dict) -> dict:
    d = json.loads(json.dumps(cfg_dict))
    d.pop("out", None)  # the folder may have moved with the sweep
    return d


def finished(point: Point) -> bool:
    """True when the point's folder holds a complete run of exactly this point's config."""
    folder = point.folder
    try:
        info = json.loads((folder / "run.json").read_text())
        saved = load_yaml((folder / "config.yaml").read_text(), str(folder / "config.yaml"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return (
        isinstance(info, dict)
        and info.get("status") == "complete"
        and (folder / "metrics.json").is_file()
        and isinstance(saved, dict)
        and _comparable(saved) == _comparable(to_dict(point.config))
    )


def _clear_point(folder: Path) -> None:
    """Empty a point folder left by an unfinished or different run, so no stale output survives it.

    Only files an earlier run of the tool wrote are removed; a folder holding anything else is left
    as it is and refused in one line (that point fails, the others go on).
    """
    clear_run_folder(folder, what="sweep point folder")


# -- workers end with the sweep ---------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_bound_to: int | None = None


def bind_to_parent(parent_pid: int) -> None:
    """End this worker process when the sweep process ``parent_pid`` dies (also by SIGKILL).

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); a parent
    that died before this call is caught by comparing ``getppid()``. Elsewhere a daemon thread checks
    the parent pid every half second. A worker orphaned mid-point must not keep writing into point
    folders that a resumed sweep is using. Idempotent per process.
    """
    global _bound_to
    if _bound_to == parent_pid or os.getpid() == parent_pid:
        return  # already bound, or the point runs in the sweep process itself (joblib with one job)
    _bound_to = parent_pid
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="sweep-parent-watch", daemon=True).start()


# -- one point (runs in a worker) -------------------------------------------------------------------------
def _worker_threads(host_threads: dict[str, int] | None) -> int:
    """Torch threads for a point on a Dask worker: the host's cores over every Dask thread on that host
    (each Dask thread runs a point at a time), so the points on one machine never oversubscribe it."""
    try:
        from urllib.parse import urlparse

        from distributed import get_worker

        worker = get_worker()
        own = int(worker.state.nthreads)
        total = (host_threads or {}).get(urlparse(worker.address).hostname or "", own)
        return max(1, cores() // max(1, total, own))
    except (ImportError, ValueError, AttributeError):
        return cores()


def _host_threads(client: Any) -> dict[str, int]:
    """Dask threads per worker host, from the scheduler's view of the cluster."""
    from urllib.parse import urlparse

    out: dict[str, int] = {}
    for addr, w in client.scheduler_info().get("workers", {}).items():
        host = w.get("host") or urlparse(addr).hostname or ""
        out[host] = out.get(host, 0) + int(w.get("nthreads", 1))
    return out


def run_point(task: PointTask) -> dict[str, Any]:
    """Run one point as an ordinary ``run`` (extract → align → retrieve) in its run folder.

    Never raises for a failing point: the run folder says ``failed`` with the one-line error, and so
    does the returned summary.
    """
    import torch
    from cvgl.align.stage import run_alignment
    from cvgl.cache.naming import stages_needed
    from cvgl.extract.runner import run_extraction
    from cvgl.orchestration.chain import in_run_folder
    from cvgl.retrieve.runner import run_retrieval

    keep_worker_on_memory_growth()  # a trained point's heap high-water mark is no leak (worker_memory.py)
    if task.parent_pid is not None:
        bind_to_parent(task.parent_pid)
    torch.set_num_threads(task.threads or _worker_threads(task.host_threads))
    try:
        # Checked by the sweep before it started the point; checked again here, as files may have
        # appeared since. Such a point fails alone, recorded in the table only: its folder is not ours.
        _clear_point(Path(str(task.config.out)))
    except UserError as e:
        return {"index": task.index, "status": "failed", "error": one_line(e), "unrecorded": True}

    def work(cfg, store, run) -> dict:
        run.record(
            command=task.command,
            sweep_point={k: display(v) for k, v in task.values.items()},
            worker={"host": socket.gethostname(), "pid": os.getpid(), "torch_threads": torch.get_num_threads()},
        )
        t0 = time.perf_counter()
        extract_needed, align_needed = stages_needed(cfg)  # named inputs skip stages
        # The sweep extracted first; here every entry is found in the cache (no second launcher).
        entries = (
            run_extraction(replace(cfg, extract=replace(cfg.extract, launcher="none")), store)
            if extract_needed
            else []
        )
        run.record_keys({e.alias: e.key for e in entries})
        t1 = time.perf_counter()
        aligned = run_alignment(cfg, store, run) if align_needed else []
        t2 = time.perf_counter()
        metrics = run_retrieval(cfg, store, run)
        t3 = time.perf_counter()
        timings = {"extract_s": t1 - t0, "align_s": t2 - t1, "retrieve_s": t3 - t2}
        run.record(timings=timings, align_reused=bool(aligned) and all(a.reused for a in aligned))
        return metrics

    try:
        metrics, _ = in_run_folder("run", task.config, task.cache_root, work)
    except Exception as e:  # a failing point is recorded (its folder says failed); the others go on
        return {"index": task.index, "status": "failed", "error": one_line(e)}
    return {"index": task.index, "status": "complete", **{k: metrics.get(k) for k in METRICS}}


def _fail_unstarted(point: Point, sweep: Sweep, cache_root: str, message: str) -> None:
    """Record a point that could not start (its extraction failed) as a failed run in its folder."""
    from cvgl.core.run_folder import RunFolder

    _clear_point(point.folder)
    run = RunFolder(point.config, "run", cache_root=Path(cache_root))
    run.record(command=sweep.command(point), sweep_point={k: display(v) for k, v in point.values.items()})
    run.fail(message)


# -- backends -------------------------------------------------------------------------------------------
def _dask_client(sweep: Sweep, n_jobs: int):
    """A client of the configured Dask scheduler, or of a new LocalCluster of worker processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserError(
            "sweep.backend=dask needs dask's distributed scheduler; install it with "
            "pip install 'cvgl-pipeline[dask]' (or use sweep.backend=loky)"
        ) from None
    s = sweep.settings
    if s.scheduler:
        try:
            return Client(s.scheduler, timeout=s.timeout), None
        except ValueError as e:  # an address Dask cannot parse: nothing was waited for
            raise UserError(
                f"sweep.scheduler={s.scheduler} is not a Dask scheduler address ({one_line(e)}); "
                "write it as tcp://HOST:PORT"
            ) from None
        except (OSError, TimeoutError) as e:
            raise UserError(
                f"cannot reach the Dask scheduler at {s.scheduler} within {s.timeout:g} s ({one_line(e)}); "
                "start the scheduler (or its dask-jobqueue cluster) first, or fix sweep.scheduler"
            ) from None
    import logging

    # No dashboard (no port to claim) and only errors from the cluster's own logging on stderr.
    cluster = LocalCluster(
        n_workers=n_jobs,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    return Client(cluster, timeout=s.timeout), cluster


def _execute(tasks: list[PointTask], sweep: Sweep, n_jobs: int, client: Any) -> Iterable[dict]:
    from joblib import Parallel, delayed, parallel_config

    if not tasks:
        return []
    backend = "dask" if client is not None else "loky"
    with parallel_config(backend=backend, n_jobs=n_jobs):
        yield from Parallel(return_as="generator_unordered")(delayed(run_point)(t) for t in tasks)


# -- the sweep ------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """What a finished sweep wrote and how its points ended."""

    rows: list[dict[str, Any]]
    files: list[Path]
    reused: int
    failed: int
    markdown: str


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.sweep.lock`` (an exclusive flock) for the whole sweep; a second sweep is refused.

    The lock dies with the process that holds it (also by SIGKILL), so a killed sweep never blocks
    its resume. The file stays: removing it would let two sweeps hold locks on different files.
    """
    with disk_full_is_user_error(out):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"out={out} exists and is not a folder; give the sweep a folder") from None
        except OSError as e:
            raise UserError(f"out={out} cannot be created ({e.strerror or e}); give a folder you can write to") from None
    path = out / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot open the sweep lock {path} ({e.strerror or e}); give a folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another sweep is running in {out} (it holds {path}); wait for it to finish, "
                "or give this sweep another out="
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def _read_record(out: Path) -> dict[str, list[str]] | None:
    """{table file: [checksums the tool wrote]} from ``sweep-files.json``; {} when there is none,
    None when there is a file of that name that is not the tool's record."""
    path = out / RECORD_FILE
    if not os.path.lexists(path):
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("written_by") == _RECORD_TAG else None
    if not isinstance(files, dict) or not all(
        isinstance(v, list) and all(isinstance(h, str) for h in v) for v in files.values()
    ):
        return None
    return files


def _write_record(out: Path, files: dict[str, list[str]]) -> None:
    write_json_atomic(out / RECORD_FILE, {"written_by": _RECORD_TAG, "files": files})


def remove_own_tables(out: Path) -> None:
    """Remove the table files an earlier sweep of the tool wrote in ``out``; refuse any other file there.

    A table file counts as the tool's when ``sweep-files.json`` lists its current checksum. Anything
    else at those names (a user's ``sweep.csv``, a table edited since) is refused in one line before
    anything is removed or run.
    """
    record = _read_record(out)
    if record is None:
        raise UserError(
            f"{out / RECORD_FILE} was not written by this tool; move it away or give the sweep another out="
        )
    present = [n for n in TABLE_FILES if os.path.lexists(out / n)]
    for n in present:
        p = out / n
        if p.is_symlink() or not p.is_file() or _sha256(p) not in record.get(n, []):
            raise UserError(
                f"{p} was not written by a sweep of this tool (or was changed since); move it away or "
                "give the sweep another out="
            )
    for n in present:
        (out / n).unlink(missing_ok=True)
    if present or record:
        _write_record(out, {})


def _prepare_points(points: list[Point]) -> dict[int, str]:
    """Empty the folders of the points about to run of an earlier run's files; returns {index: error}
    for points whose folder holds files the tool did not write (left untouched, failed alone)."""
    refused: dict[int, str] = {}
    for p in points:
        try:
            _clear_point(p.folder)
        except UserError as e:
            refused[p.index] = one_line(e)
    return refused


def run_sweep(
    sweep: Sweep, cache_root: Path, *, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None
) -> SweepResult:
    """Run every point of ``sweep`` not already finished, then write the table and the plot."""
    say = log or (lambda _m: None)
    check_apart(sweep.out, cache_root)
    points = sweep.points
    todo = [p for p in points if not finished(p)]
    jobs, threads = plan_jobs(sweep.settings.n_jobs, len(todo), cores())
    client = cluster = None
    if todo and sweep.settings.backend == "dask":
        # Connect before any work or any write, so an unreachable scheduler costs nothing.
        client, cluster = _dask_client(sweep, jobs)
    try:
        with sweep_lock(sweep.out):
            say(f"sweep of {len(points)} points into {sweep.out}")
            return _run_locked(sweep, cache_root, threads, jobs, client, progress, say)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _run_locked(
    sweep: Sweep,
    cache_root: Path,
    threads: int,
    jobs: int,
    client: Any,
    progress: ProgressFn | None,
    say: Callable[[str], None],
) -> SweepResult:
    from cvgl.cache.naming import stages_needed
    from cvgl.cache.store import CacheStore
    from cvgl.extract.distributed import extract as run_extraction

    points = sweep.points
    # Whether a point is finished is decided again under the lock: another sweep may have ended.
    todo = [p for p in points if not finished(p)]
    reused = len(points) - len(todo)
    store = CacheStore(cache_root)
    store.require_writable()
    root = str(store.root.absolute())
    remove_own_tables(sweep.out)  # a table on disk must always be a finished sweep's
    if reused:
        say(f"{reused} of {len(points)} points already complete in {sweep.out / 'points'}: reused")
    refused = _prepare_points(todo)
    for i, msg in refused.items():
        say(f"point {i} failed: {msg}")
    runnable: list[Point] = []
    groups: dict[str, list[Point]] = {}
    for p in todo:
        if p.index not in refused:
            groups.setdefault(p.group, []).append(p)
    for n, members in enumerate(groups.values()):
        if not stages_needed(members[0].config)[0]:  # imported entries: nothing to extract
            runnable += members
            continue
        try:
            entries = run_extraction(members[0].config, store, progress=progress)
            fresh = sum(not e.reused for e in entries)
            state = f"{fresh} computed, {len(entries) - fresh} from the cache" if fresh else "all from the cache"
            say(f"extraction {n + 1}/{len(groups)}: {len(entries)} entries ({state})")
            runnable += members
        except Exception as e:  # every point of this extraction fails with its error
            for p in members:
                _fail_unstarted(p, sweep, root, one_line(e))
    remote = client is not None and bool(sweep.settings.scheduler)
    host_threads = _host_threads(client) if remote else None
    parent = os.getpid() if client is None else None  # loky workers are this process's children
    tasks = [
        PointTask(
            p.index, p.config, p.values, sweep.command(p), root, None if remote else threads, host_threads, parent
        )
        for p in runnable
    ]
    done = reused + len(todo) - len(runnable)
    if progress:
        progress("sweep points", done, len(points))
    # On an existing cluster, n_jobs 0 means every worker thread it has, not this machine's cores.
    for r in _execute(tasks, sweep, (sweep.settings.n_jobs or -1) if remote else jobs, client):
        done += 1
        if progress:
            info = {"R@1": r["R@1"]} if r["status"] == "complete" and r.get("R@1") is not None else {}
            progress("sweep points", done, len(points), info)
        if r["status"] != "complete":
            say(f"point {r['index']} failed: {r['error']}")
            if r.get("unrecorded"):
                refused[r["index"]] = r["error"]
    return write_results(sweep, reused=reused, failed_outside=refused)


# -- results --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def point_row(sweep: Sweep, point: Point, refused: str | None = None) -> dict[str, Any]:
    """One table row from the point's run folder (the single source of truth, also after a resume).

    ``refused``: the error of a point that could not run because its folder holds files the tool
    did not write; its folder is not read (nothing in it is the tool's).
    """
    info = {"status": "failed", "error": refused} if refused is not None else _read_json(point.folder / "run.json")
    status = str(info.get("status") or "not run")
    metrics = _read_json(point.folder / "metrics.json") if status == "complete" else {}
    keys = info.get("cache_keys") or {}
    timings = info.get("timings") or {}
    row: dict[str, Any] = {"point": point.index}
    row.update({k: display(point.values[k]) for k in sweep.axis_keys})
    for m in METRICS:
        v = metrics.get(m)
        row[m] = float(v) if isinstance(v, (int, float)) else ""
    row["n_gallery"] = metrics.get("n_gallery")  # for the screen's R@1% (not a CSV column)
    for t in ("align_s", "retrieve_s"):
        v = timings.get(t)
        row[t] = round(float(v), 3) if isinstance(v, (int, float)) and status == "complete" else ""
    row["query_key"] = next((v for k, v in keys.items() if k.startswith("query:")), "")
    row["gallery_key"] = next((v for k, v in keys.items() if k.startswith("gallery:")), "")
    row["run"] = os.path.relpath(point.folder, sweep.out)
    row["status"] = status
    row["error"] = str(info.get("error") or "") if status != "complete" else ""
    return row


def _columns(sweep: Sweep) -> list[str]:
    return [
        "point",
        *sweep.axis_keys,
        *METRICS,
        "align_s",
        "retrieve_s",
        "query_key",
        "gallery_key",
        "run",
        "status",
        "error",
    ]


def seed_summary(sweep: Sweep, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of each metric over the seeds of every other-axes setting."""
    if "seed" not in sweep.axis_keys:
        return []
    others = [k for k in sweep.axis_keys if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in others), []).append(r)
    out = []
    for key, members in groups.items():
        ok = [r for r in members if r["status"] == "complete"]
        s: dict[str, Any] = dict(zip(others, key))
        s["n_seeds"] = len(ok)
        for m in METRICS:
            vals = [r[m] for r in ok if isinstance(r[m], float)]
            mean = sum(vals) / len(vals) if vals else float("nan")
            var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            s[f"{m}_mean"] = mean if vals else ""
            s[f"{m}_std"] = math.sqrt(var) if vals else ""
        out.append(s)
    return out


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _cell(column: str, v: Any, n_gallery: Any = None) -> str:
    if column in METRICS and isinstance(v, float):
        return metric_cell(column, v, n_gallery)  # R@1% is "–" under 100 gallery items
    if isinstance(v, float):
        return f"{v:.2f}"
    if column.endswith("_key") and isinstance(v, str):
        return v[:12]
    return str(v).replace("|", "\\|")


def markdown(sweep: Sweep, rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """The sweep table (and the seed summary) as Markdown."""
    cols = [c for c in _columns(sweep) if c != "error" or any(r["error"] for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in METRICS else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(_cell(c, r[c], r.get("n_gallery")) for c in cols) + " |" for r in rows]
    n_gallery = next((r.get("n_gallery") for r in rows if r.get("n_gallery")), None)
    if summary:
        others = [k for k in sweep.axis_keys if k != "seed"]
        head = [*others, "n_seeds", *METRICS]
        lines += ["", "mean ± std over seeds", "", "| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join("---:" if c in METRICS else "---" for c in head) + "|")
        for s in summary:
            cells = [str(s[k]) for k in others] + [str(s["n_seeds"])]
            cells += [
                f"{s[f'{m}_mean']:.2f} ± {s[f'{m}_std']:.2f}"
                if metric_cell(m, s[f"{m}_mean"], n_gallery) != "–"
                else "–"
                for m in METRICS
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(sweep: Sweep, *, reused: int = 0, failed_outside: dict[int, str] | None = None) -> SweepResult:
    """Write sweep.csv, sweep.md, sweep_seeds.csv (with a seed axis) and sweep.png from the run folders.

    ``failed_outside``: {point index: error} of points that failed without a run folder of their own.
    Each file's checksum is recorded in ``sweep-files.json`` before the file is written, so a later
    sweep recognises the tables as its own even after a kill between the two.
    """
    refused = failed_outside or {}
    rows = [point_row(sweep, p, refused.get(p.index)) for p in sweep.points]
    summary = seed_summary(sweep, rows)
    md = markdown(sweep, rows, summary)
    content: dict[str, bytes] = {}
    if summary:
        others = [k for k in sweep.axis_keys if k != "seed"]
        cols = [*others, "n_seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))]
        content["sweep_seeds.csv"] = _csv(summary, cols).encode()
    content["sweep.png"] = render_plot(sweep, rows)
    # The CSV last: its presence means the sweep finished writing.
    content["sweep.md"] = md.encode()
    content["sweep.csv"] = _csv(rows, _columns(sweep)).encode()
    record = _read_record(sweep.out) or {}
    digests = {n: hashlib.sha256(data).hexdigest() for n, data in content.items()}
    _write_record(sweep.out, {n: sorted({*record.get(n, []), digests[n]}) for n in {*record, *digests}})
    files = []
    for name, data in content.items():
        write_bytes_atomic(sweep.out / name, data)
        files.append(sweep.out / name)
    _write_record(sweep.out, {n: [d] for n, d in digests.items()})
    failed = sum(r["status"] != "complete" for r in rows)
    return SweepResult(rows, files, reused, failed, md)


def render_plot(sweep: Sweep, rows: list[dict[str, Any]]) -> bytes:
    """``sweep.png`` as PNG bytes (:mod:`cvgl.orchestration.sweep_plot`: a panel per metric, seed as
    error bars), drawn into a hidden temporary file in the sweep folder and read back, so its checksum
    can be recorded before the file itself is written."""
    from cvgl.orchestration.sweep_plot import write_sweep_plot

    tmp = sweep.out / f".sweep.png.render-{os.getpid()}"
    try:
        write_sweep_plot(tmp, sweep.axis_keys, rows, {a.key: a.values for a in sweep.axes})
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
