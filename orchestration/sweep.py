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
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from cvgl.configs.schema import Config, to_dict
from cvgl.core.atomic import write_text_atomic
from cvgl.core.bounded_yaml import load_yaml
from cvgl.core.console import metric_cell
from cvgl.core.errors import UserError
from cvgl.core.threads import available_cores
from cvgl.orchestration.sweep_spec import Point, Sweep, display
from cvgl.orchestration.worker_memory import keep_worker_on_memory_growth

METRICS = ("R@1", "R@5", "R@10", "R@1%", "AP")
TABLE_FILES = ("sweep.csv", "sweep.md", "sweep_seeds.csv", "sweep.png")
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
    """Empty a point folder left by an unfinished or different run, so no stale output survives it."""
    if not folder.exists():
        return
    if not ((folder / "run.json").exists() or (folder / "config.yaml").exists()):
        if any(folder.iterdir()):
            raise UserError(f"{folder} holds files that are not a pipeline run; move them away and rerun")
        return
    shutil.rmtree(folder)


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
    from cvgl.extract.runner import run_extraction
    from cvgl.orchestration.chain import in_run_folder
    from cvgl.retrieve.runner import run_retrieval

    keep_worker_on_memory_growth()  # a trained point's heap high-water mark is no leak (worker_memory.py)
    torch.set_num_threads(task.threads or _worker_threads(task.host_threads))
    _clear_point(Path(str(task.config.out)))

    def work(cfg, store, run) -> dict:
        run.record(
            command=task.command,
            sweep_point={k: display(v) for k, v in task.values.items()},
            worker={"host": socket.gethostname(), "pid": os.getpid(), "torch_threads": torch.get_num_threads()},
        )
        t0 = time.perf_counter()
        # The sweep extracted first; here every entry is found in the cache (no second launcher).
        entries = run_extraction(replace(cfg, extract=replace(cfg.extract, launcher="none")), store)
        run.record_keys({e.alias: e.key for e in entries})
        t1 = time.perf_counter()
        aligned = run_alignment(cfg, store, run)
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


def _checked(points: list[Point], sweep: Sweep, cache_root: str) -> list[Point]:
    """The points whose align.method and align.params are valid; the others fail now, before any
    extraction, each with its one-line error."""
    from cvgl.align.registry import check_config
    from cvgl.core.errors import UserError

    ok = []
    for p in points:
        try:
            check_config(p.config)
            ok.append(p)
        except UserError as e:
            _fail_unstarted(p, sweep, cache_root, one_line(e))
    return ok


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
        except (OSError, TimeoutError, ValueError) as e:
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


def run_sweep(
    sweep: Sweep, cache_root: Path, *, progress: ProgressFn | None = None, log: Callable[[str], None] | None = None
) -> SweepResult:
    """Run every point of ``sweep`` not already finished, then write the table and the plot."""
    say = log or (lambda _m: None)
    points = sweep.points
    todo = [p for p in points if not finished(p)]
    reused = len(points) - len(todo)
    jobs, threads = plan_jobs(sweep.settings.n_jobs, len(todo), cores())
    client = cluster = None
    if todo and sweep.settings.backend == "dask":
        # Connect before any work or any write, so an unreachable scheduler costs nothing.
        client, cluster = _dask_client(sweep, jobs)
    try:
        from cvgl.cache.store import CacheStore
        from cvgl.extract.distributed import extract as run_extraction

        store = CacheStore(cache_root)
        store.require_writable()
        root = str(store.root.absolute())
        sweep.out.mkdir(parents=True, exist_ok=True)
        for name in TABLE_FILES:  # a table on disk must always be a finished sweep's
            (sweep.out / name).unlink(missing_ok=True)
        if reused:
            say(f"{reused} of {len(points)} points already complete in {sweep.out / 'points'}: reused")
        runnable: list[Point] = []
        groups: dict[str, list[Point]] = {}
        for p in _checked(todo, sweep, root):
            groups.setdefault(p.group, []).append(p)
        for n, members in enumerate(groups.values()):
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
        tasks = [
            PointTask(
                p.index, p.config, p.values, sweep.command(p), root, None if remote else threads, host_threads
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
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return write_results(sweep, reused=reused)


# -- results --------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def point_row(sweep: Sweep, point: Point) -> dict[str, Any]:
    """One table row from the point's run folder (the single source of truth, also after a resume)."""
    info = _read_json(point.folder / "run.json")
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


def write_results(sweep: Sweep, *, reused: int = 0) -> SweepResult:
    """Write sweep.csv, sweep.md, sweep_seeds.csv (with a seed axis) and sweep.png from the run folders."""
    rows = [point_row(sweep, p) for p in sweep.points]
    summary = seed_summary(sweep, rows)
    md = markdown(sweep, rows, summary)
    files = []
    if summary:
        others = [k for k in sweep.axis_keys if k != "seed"]
        cols = [*others, "n_seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))]
        write_text_atomic(sweep.out / "sweep_seeds.csv", _csv(summary, cols))
        files.append(sweep.out / "sweep_seeds.csv")
    files.append(write_plot(sweep.out / "sweep.png", sweep, rows))
    # The CSV last: its presence means the sweep finished writing.
    write_text_atomic(sweep.out / "sweep.md", md)
    write_text_atomic(sweep.out / "sweep.csv", _csv(rows, _columns(sweep)))
    files += [sweep.out / "sweep.md", sweep.out / "sweep.csv"]
    failed = sum(r["status"] != "complete" for r in rows)
    return SweepResult(rows, files, reused, failed, md)


def write_plot(path: Path, sweep: Sweep, rows: list[dict[str, Any]]) -> Path:
    """``sweep.png`` (:mod:`cvgl.orchestration.sweep_plot`): a panel per metric, seed as error bars."""
    from cvgl.orchestration.sweep_plot import write_sweep_plot

    return write_sweep_plot(path, sweep.axis_keys, rows, {a.key: a.values for a in sweep.axes})
