"""benchmarks/gpu_check.sh --smoke: the GPU readiness check runs end to end on a CPU and reports every item."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_gpu_check_smoke_writes_one_json_and_a_log_covering_every_item(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("PIPELINE_CACHE_DIR", None)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["mode"] == "smoke" and res["device"] == "cpu" and res["ok"] is True
    assert set(res["steps"]) == {"pytest", "extract", "align", "evaluate", "sweep"}
    assert all(s["exit_code"] == 0 and s["seconds"] > 0 for s in res["steps"].values())
    assert res["pytest_gpu"]["failed"] == 0
    assert res["extract"]["images_per_s"] > 0 and res["extract"]["bf16_peak_share_percent"] is not None
    assert res["align"]["total_s"] > 0
    assert res["evaluate"]["speedup_vs_loop"] > 0 and res["evaluate"]["evaluate_s"] > 0
    assert res["sweep"]["points"] == 8 and res["sweep"]["complete"] == 8
    log = (out / "gpu_check.log").read_text()
    for step in ("pytest", "extract", "align", "evaluate", "sweep"):
        assert f"== {step}: exit 0" in log
    # The sweep used the check's own cache, inside OUTDIR: nothing outside it was written.
    assert (out / "cache" / "entries").is_dir()
    assert not (tmp_path / "runs").exists()
