"""How many threads the tool computes with, and how its OpenMP threads wait.

**Thread count.** :func:`available_cores` is the number of cores this process can really use: the
size of its CPU affinity mask (``taskset``, cpusets, Slurm's binding), lowered to the CPU quota of
its cgroup (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us`` in v1; a container
started with ``--cpus 2`` on a 64-core host gets 2, not 64). :func:`default_threads` is that count
unless the user set ``OMP_NUM_THREADS``, which always wins. The CLI applies it at startup
(:func:`apply_thread_policy`); sweep workers divide it between the points they run at once.

**Wait policy.** OpenMP worker threads that finish their share of an operation spin while they wait
for the others. On a machine whose cores are shared, a thread that was descheduled keeps every other
thread spinning until it runs again, and the spinning takes the CPU time the late thread needs:
training slowed 3–13× beside two busy processes on 2 cores, where a fair share is 2× (BENCHMARKS.md).
Sleeping instead (``OMP_WAIT_POLICY=PASSIVE``) fixes that but costs a wake-up per parallel region,
10–30 % on a quiet machine. So :func:`prepare_openmp_env` looks at the machine first
(:func:`others_running`): when other work already holds the cores this process would use, threads
sleep while they wait; on a quiet machine they spin for a short while (``GOMP_SPINCOUNT``, about
0.2 ms) and then sleep, which costs nothing there and bounds the damage if load arrives later.
OpenMP reads both once, when its runtime is loaded (``import torch``), so this runs when the ``cvgl``
package is imported, before anything imports torch; values the user set are kept. The thread count
itself never changes with the load, so results stay the same run to run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, MutableMapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")
#: The wait policy the tool asks OpenMP for when other work holds the cores it would use.
WAIT_POLICY = "PASSIVE"
#: Spin iterations before a waiting thread sleeps on a quiet machine (libgomp's default is 300,000,
#: a few milliseconds; this is about 0.2 ms).
QUIET_SPINCOUNT = "20000"
#: Records which OpenMP variable the tool itself set, so that child processes can tell it from the user's.
CHOICE_MARK = "CVGL_OPENMP_CHOICE"


def affinity_cores(affinity: Iterable[int] | None = None) -> int:
    """Cores in ``affinity`` (default: this process's affinity mask; the machine's count where the
    platform has no affinity call)."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return max(1, len(set(affinity)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _quota_v2(text: str | None) -> float | None:
    """Cores allowed by a cgroup v2 ``cpu.max`` (``"max 100000"`` = none, ``"200000 100000"`` = 2)."""
    if not text:
        return None
    parts = text.split()
    try:
        if parts[0] == "max":
            return None
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota: str | None, period: str | None) -> float | None:
    """Cores allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none)."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_dirs(base: Path, rel: str) -> list[Path]:
    """``base/rel`` and each of its ancestors up to ``base`` (a limit on any of them applies)."""
    parts = [p for p in rel.strip("/").split("/") if p and p not in (".", "..")]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota, in cores, of this process's cgroup and its ancestors; None if none.

    Reads ``proc_cgroup`` (``/proc/self/cgroup``) for the process's place in each hierarchy and looks
    for the quota files under ``root`` (``/sys/fs/cgroup``): ``<dir>/cpu.max`` (v2) and
    ``<cpu mount>/<dir>/cpu.cfs_quota_us`` (v1). Inside a container the process's own cgroup is
    usually the mount's root, which is looked at as well.
    """
    rel_v2, rel_v1 = "/", "/"
    for line in (_read(proc_cgroup) or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            rel_v2 = path or "/"
        elif "cpu" in controllers.split(","):
            rel_v1 = path or "/"
    limits = []
    for d in _own_dirs(root, rel_v2):
        limits.append(_quota_v2(_read(d / "cpu.max")))
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for d in _own_dirs(root / mount, rel_v1):
            limits.append(_quota_v1(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")))
    found = [x for x in limits if x is not None]
    return min(found) if found else None


def available_cores(
    affinity: Iterable[int] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
) -> int:
    """Cores this process can use: its affinity mask, lowered to its cgroup's CPU quota rounded up
    (a quota of 1.5 cores gives 2 threads, which the quota then runs at 75 % each)."""
    n = affinity_cores(affinity)
    quota = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.ceil(round(quota, 6))))
    return n


def user_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """The thread count the user asked for with ``OMP_NUM_THREADS`` (a positive integer), else None."""
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    # OpenMP also accepts a nested list ("4,2"); its first number is the outer team's size.
    head = value.split(",")[0].strip()
    return int(head) if head.isdigit() and int(head) > 0 else None


def default_threads(environ: MutableMapping[str, str] | None = None, **cores_kw) -> int:
    """Threads for the tool's compute: ``OMP_NUM_THREADS`` when the user set it, else
    :func:`available_cores` (keyword arguments go to it)."""
    return user_threads(environ) or available_cores(**cores_kw)


def others_running(samples: int = 5, gap_s: float = 0.002, proc_stat: Path = PROC_STAT) -> int | None:
    """Runnable tasks on the machine other than the caller: the kernel's ``procs_running`` minus one,
    the smallest of ``samples`` readings ``gap_s`` apart (a task that runs for a moment is not load;
    a busy process is runnable in every reading). None where ``/proc/stat`` cannot be read."""
    import time

    seen = []
    for i in range(max(1, samples)):
        if i:
            time.sleep(gap_s)
        for line in (_read(proc_stat) or "").splitlines():
            if line.startswith("procs_running "):
                try:
                    seen.append(max(0, int(line.split()[1]) - 1))
                except ValueError:
                    pass
                break
    return min(seen) if seen else None


def machine_is_busy(threads: int, others: int | None, cpus: int | None = None) -> bool:
    """Whether ``threads`` of ours plus ``others`` runnable tasks are more than the machine's ``cpus``
    (default: ``os.cpu_count()``), i.e. some of our threads would share a core."""
    if others is None:
        return False
    return others + threads > max(1, cpus if cpus is not None else (os.cpu_count() or 1))


def prepare_openmp_env(
    environ: MutableMapping[str, str] | None = None,
    affinity: Iterable[int] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_SELF_CGROUP,
    read_others: Callable[[], int | None] | None = None,
    cpus: int | None = None,
) -> str:
    """Set OpenMP's environment for the tool, keeping whatever the user set; returns the wait policy
    chosen (``"PASSIVE"``, ``"SPIN-THEN-SLEEP"`` or ``"USER"``).

    Unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``: ``OMP_WAIT_POLICY=PASSIVE`` when
    :func:`machine_is_busy` (other runnable tasks as ``read_others()`` counts them, default
    :func:`others_running`), else ``GOMP_SPINCOUNT`` = :data:`QUIET_SPINCOUNT`. ``OMP_NUM_THREADS`` = :func:`available_cores`
    when a cgroup quota makes that smaller than the affinity mask (OpenMP's own default) and the
    user set no count. Takes effect only if it runs before the OpenMP runtime is loaded, i.e. before
    ``import torch`` in this process; child processes inherit it through the environment either way.
    """
    env = os.environ if environ is None else environ
    # A child process (a sweep worker, a torchrun rank) inherits the parent's choice through the
    # environment; it is the tool's, not the user's, so the child looks at the machine again.
    chosen = env.pop(CHOICE_MARK, "")
    name, _, value = chosen.partition("=")
    if name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") and env.get(name) == value:
        del env[name]
    mask = affinity_cores(affinity)
    n = available_cores(affinity, cgroup_root, proc_cgroup)
    if user_threads(env) is None and n < mask:
        env["OMP_NUM_THREADS"] = str(n)
    if env.get("OMP_WAIT_POLICY") or env.get("GOMP_SPINCOUNT"):
        return "USER"
    others = (read_others or others_running)()
    if machine_is_busy(user_threads(env) or n, others, cpus):
        env["OMP_WAIT_POLICY"] = WAIT_POLICY
        env[CHOICE_MARK] = f"OMP_WAIT_POLICY={WAIT_POLICY}"
        return WAIT_POLICY
    env["GOMP_SPINCOUNT"] = QUIET_SPINCOUNT
    env[CHOICE_MARK] = f"GOMP_SPINCOUNT={QUIET_SPINCOUNT}"
    return "SPIN-THEN-SLEEP"


def apply_thread_policy() -> int:
    """Set torch's intra-op threads to :func:`default_threads` (for a process that loaded torch
    before :func:`prepare_openmp_env` could act, and for workers); returns the count."""
    import torch

    n = default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


__all__ = [
    "CHOICE_MARK",
    "QUIET_SPINCOUNT",
    "WAIT_POLICY",
    "affinity_cores",
    "apply_thread_policy",
    "available_cores",
    "cgroup_cpu_limit",
    "default_threads",
    "machine_is_busy",
    "others_running",
    "prepare_openmp_env",
    "user_threads",
]
