"""What tests share: the command line as a user runs it, and the tiny config that runs it in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A tiny random DINOv3 and a tiny synthetic dataset: the whole pipeline in seconds.
TINY = [
    "dataset.synthetic.n_locations=6",
    "dataset.synthetic.n_distractors=3",
    "dataset.synthetic.views_per_location=3",
    "dataset.synthetic.size=64",
    "preprocess.resize=64",
    "backbone.arch={depth: 3, hidden_size: 64, num_heads: 2}",
    "backbone.layers=[1,2]",
    "align.isms.out_dim=32",
    "align.isms.epochs=3",
    "align.isms.batch_size=16",
    "extract.shard_rows=8",
    "extract.batch_size=4",
]


def cli(
    *args: str, cache: Path, cwd: Path, timeout: float = 300, quiet: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``pipeline [--quiet] ARGS`` in a real process, with its own cache, from ``cwd``."""
    full_env = {**os.environ, "PIPELINE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cvgl.pipeline", *(["--quiet"] if quiet else []), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr: no traceback, no second line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]
