"""Thread counts follow the cores a process can really use: affinity mask and cgroup CPU quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cvgl.core.threads import (
    QUIET_SPINCOUNT,
    available_cores,
    cgroup_cpu_limit,
    default_threads,
    machine_is_busy,
    others_running,
    prepare_openmp_env,
    user_threads,
)


def _v2(tmp_path: Path, cpu_max: str | None, rel: str = "/", own: str | None = None) -> tuple[Path, Path]:
    """A fake cgroup v2 tree: ``cpu.max`` at the root (``cpu_max``) and in the process's own group."""
    root = tmp_path / "cgroup"
    root.mkdir()
    if cpu_max is not None:
        (root / "cpu.max").write_text(cpu_max + "\n")
    if own is not None:
        d = root / rel.strip("/")
        d.mkdir(parents=True)
        (d / "cpu.max").write_text(own + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{rel}\n")
    return root, proc


def test_no_quota_keeps_the_affinity_mask(tmp_path):
    root, proc = _v2(tmp_path, "max 100000")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cores(range(8), root, proc) == 8


def test_v2_quota_lowers_the_affinity_mask(tmp_path):
    root, proc = _v2(tmp_path, "200000 100000")
    assert cgroup_cpu_limit(root, proc) == 2.0
    assert available_cores(range(64), root, proc) == 2


def test_fractional_quota_rounds_up_and_never_below_one(tmp_path):
    root, proc = _v2(tmp_path, "150000 100000")
    assert available_cores(range(8), root, proc) == 2
    (tmp_path / "small").mkdir()
    root, proc = _v2(tmp_path / "small", "10000 100000")
    assert available_cores(range(8), root, proc) == 1


def test_affinity_smaller_than_quota_wins(tmp_path):
    root, proc = _v2(tmp_path, "800000 100000")
    assert available_cores({0, 3}, root, proc) == 2


def test_own_group_and_ancestors_the_tightest_applies(tmp_path):
    root, proc = _v2(tmp_path, "400000 100000", rel="/user.slice/job-7", own="300000 100000")
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert available_cores(range(16), root, proc) == 3


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(root, proc) == 3.0
    assert available_cores(range(32), root, proc) == 3


def test_cgroup_v1_unlimited_and_missing_files(tmp_path):
    root = tmp_path / "cgroup"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("1:cpu:/\n0::/\n")
    assert cgroup_cpu_limit(root, proc) is None
    assert available_cores(range(4), tmp_path / "nowhere", tmp_path / "nothing") == 4


def test_garbage_in_quota_files_is_ignored(tmp_path):
    root, proc = _v2(tmp_path, "lots of cpus")
    assert available_cores(range(4), root, proc) == 4


def test_user_omp_num_threads_wins(tmp_path):
    root, proc = _v2(tmp_path, "100000 100000")
    assert default_threads({"OMP_NUM_THREADS": "6"}, affinity=range(8), cgroup_root=root, proc_cgroup=proc) == 6
    assert default_threads({}, affinity=range(8), cgroup_root=root, proc_cgroup=proc) == 1
    assert user_threads({"OMP_NUM_THREADS": "4,2"}) == 4
    for bad in ("", "0", "-3", "many"):
        assert user_threads({"OMP_NUM_THREADS": bad}) is None


def test_threads_wait_passively_when_other_work_holds_the_cores():
    env: dict[str, str] = {}
    assert prepare_openmp_env(env, affinity=range(2), read_others=lambda: 2, cpus=2) == "PASSIVE"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env


def test_threads_spin_briefly_on_a_quiet_machine():
    env: dict[str, str] = {}
    assert prepare_openmp_env(env, affinity=range(2), read_others=lambda: 0, cpus=2) == "SPIN-THEN-SLEEP"
    assert env["GOMP_SPINCOUNT"] == QUIET_SPINCOUNT and "OMP_WAIT_POLICY" not in env
    # Unknown load (no /proc/stat): the quiet setting, whose worst case is bounded by the short spin.
    env = {}
    assert prepare_openmp_env(env, affinity=range(2), read_others=lambda: None, cpus=2) == "SPIN-THEN-SLEEP"


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "active"}, {"GOMP_SPINCOUNT": "1000"}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_a_users_wait_setting_is_kept(user):
    env = dict(user)
    assert prepare_openmp_env(env, affinity=range(2), read_others=lambda: 0, cpus=2) == "USER"
    assert env == user


def test_a_child_process_looks_at_the_machine_again():
    """A sweep worker inherits the parent's choice, which was the tool's: the worker decides anew."""
    parent: dict[str, str] = {}
    prepare_openmp_env(parent, affinity=range(2), read_others=lambda: 3, cpus=2)
    child = dict(parent)
    assert prepare_openmp_env(child, affinity=range(2), read_others=lambda: 0, cpus=2) == "SPIN-THEN-SLEEP"
    assert "OMP_WAIT_POLICY" not in child and child["GOMP_SPINCOUNT"] == QUIET_SPINCOUNT


def test_busy_means_our_threads_would_share_a_core():
    assert not machine_is_busy(2, 0, cpus=2)
    assert machine_is_busy(2, 1, cpus=2)
    assert not machine_is_busy(2, 6, cpus=8)
    assert machine_is_busy(4, 5, cpus=8)
    assert not machine_is_busy(2, None, cpus=2)


def test_others_running_ignores_a_passing_task(tmp_path):
    """The smallest of several readings: a task runnable in one reading only is not load."""
    stat = tmp_path / "stat"
    readings = iter(["4", "1", "3"])

    class Stat(type(stat)):
        def read_text(self, *a, **k):
            return f"cpu  1 2 3\nprocs_running {next(readings)}\nprocs_blocked 0\n"

    assert others_running(samples=3, gap_s=0, proc_stat=Stat(stat)) == 0
    assert others_running(samples=2, gap_s=0, proc_stat=tmp_path / "missing") is None
    stat.write_text("procs_running 3\n")
    assert others_running(samples=2, gap_s=0, proc_stat=stat) == 2


def test_quota_below_the_mask_sets_omp_num_threads_unless_the_user_did(tmp_path):
    root, proc = _v2(tmp_path, "100000 100000")
    env: dict[str, str] = {}
    prepare_openmp_env(env, affinity=range(4), cgroup_root=root, proc_cgroup=proc)
    assert env["OMP_NUM_THREADS"] == "1"
    env = {"OMP_NUM_THREADS": "3"}
    prepare_openmp_env(env, affinity=range(4), cgroup_root=root, proc_cgroup=proc)
    assert env["OMP_NUM_THREADS"] == "3"
    env = {}
    prepare_openmp_env(env, affinity=range(4), cgroup_root=tmp_path / "none", proc_cgroup=proc)
    assert "OMP_NUM_THREADS" not in env  # OpenMP's default (the mask) is already right


def _import_cvgl(env: dict[str, str]) -> str:
    code = (
        "import os, sys, cvgl; assert 'torch' not in sys.modules; "
        "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ.get('GOMP_SPINCOUNT', '-'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def _clean_env() -> dict[str, str]:
    drop = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "CVGL_OPENMP_CHOICE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_importing_cvgl_sets_the_wait_before_torch_loads():
    """The setting must be in the environment when torch loads OpenMP, i.e. right after `import cvgl`."""
    assert _import_cvgl(_clean_env()) in ("PASSIVE -", f"- {QUIET_SPINCOUNT}")
    assert _import_cvgl({**_clean_env(), "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE -"


@pytest.mark.skipif((os.cpu_count() or 1) > 16, reason="would start one busy process per CPU")
def test_importing_cvgl_beside_busy_processes_waits_passively():
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        import time

        time.sleep(0.3)
        assert _import_cvgl(_clean_env()) == "PASSIVE -"
    finally:
        for p in busy:
            p.kill()
            p.wait()
