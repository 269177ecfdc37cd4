"""`pipeline sweep` on cached demo entries: n_jobs 1 vs 2, and the sweep against separate `pipeline run`s.

python benchmarks/bench_sweep.py [--workdir DIR] [--json OUT]

1. Extracts the demo's descriptors once (``pipeline extract demo``) into a cache, then copies that
   cache three times, so every measurement below trains its 12 points afresh from the same entries.
2. Times ``pipeline sweep demo --grid align.params.isms.epochs=[5,10,15] --grid seed=[0,1,2,3]`` (12
   alignment points: ISMS, three schedules, four seeds) with ``sweep.n_jobs=1`` and with ``2``.
3. Times the same 12 points as 12 separate ``pipeline run`` commands, one after another (the
   commands the sweep records for its points, ``Sweep.command``).

Reports wall and CPU time (user + sys of the processes, children included) of each, the speed-up of
2 jobs over 1, and the sweep's overhead over the separate runs (goal: at most 10 %). The machine's
load average is recorded before and after: on a shared machine only ratios from one run compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRID = ["--grid", "align.params.isms.epochs=[5,10,15]", "--grid", "seed=[0,1,2,3]"]
BASE = ["demo", "retrieve.report=false"]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], cache: Path, cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one command run to completion; raises if it fails."""
    env = {**os.environ, "PIPELINE_CACHE_DIR": str(cache)}
    c0, t0 = _cpu(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sweep_")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "cvgl.pipeline", "--quiet"]
    load0 = os.getloadavg()
    base = work / "cache-base"
    timed([*py, "extract", *BASE, f"out={work / 'extract'}"], base, work)
    caches = {}
    for name in ("jobs1", "jobs2", "runs"):
        caches[name] = work / f"cache-{name}"
        shutil.rmtree(caches[name], ignore_errors=True)
        shutil.copytree(base, caches[name], symlinks=True)
    res: dict = {}
    for jobs in (1, 2):
        out = work / f"sweep-{jobs}"
        shutil.rmtree(out, ignore_errors=True)
        wall, cpu = timed(
            [*py, "sweep", *BASE, f"sweep.n_jobs={jobs}", f"out={out}", *GRID], caches[f"jobs{jobs}"], work
        )
        res[f"sweep_n_jobs_{jobs}"] = {"wall_s": wall, "cpu_s": cpu}
        print(f"sweep n_jobs={jobs}: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)

    from cvgl.orchestration.sweep_spec import build_sweep

    spec = build_sweep("demo", ["retrieve.report=false", f"out={work / 'separate'}"], GRID[1::2])
    wall = cpu = 0.0
    for p in spec.points:
        cmd = spec.command(p)
        w, c = timed([*py, *cmd[1:]], caches["runs"], work)
        wall, cpu = wall + w, cpu + c
    res["separate_runs"] = {"wall_s": wall, "cpu_s": cpu, "commands": len(spec.points)}
    print(f"12 separate runs: {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr, flush=True)
    one, two, sep = res["sweep_n_jobs_1"], res["sweep_n_jobs_2"], res["separate_runs"]
    res["speedup_2_over_1"] = one["wall_s"] / two["wall_s"]
    res["overhead_vs_separate_percent"] = 100 * (one["wall_s"] / sep["wall_s"] - 1)
    res["overhead_vs_separate_cpu_percent"] = 100 * (one["cpu_s"] / sep["cpu_s"] - 1)
    res["environment"] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "load_before": load0,
        "load_after": os.getloadavg(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "workdir": str(work),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
