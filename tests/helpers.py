"""What tests share: the command line as a user runs it, and the tiny config that runs it in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    "align.params.isms.out_dim=32",
    "align.params.isms.epochs=3",
    "align.params.isms.batch_size=16",
    "extract.shard_rows=8",
    "extract.batch_size=4",
]


def _command(args: tuple[str, ...], cache: Path, quiet: bool, env: dict | None) -> tuple[list[str], dict]:
    full_env = {**os.environ, "PIPELINE_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return [sys.executable, "-m", "cvgl.pipeline", *(["--quiet"] if quiet else []), *args], full_env


def cli(
    *args: str, cache: Path, cwd: Path, timeout: float = 300, quiet: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``pipeline [--quiet] ARGS`` in a real process, with its own cache, from ``cwd``; ``env`` adds to
    the test's environment (a variable set to None is removed)."""
    cmd, full_env = _command(args, cache, quiet, env)
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def start_cli(
    *args: str, cache: Path, cwd: Path, quiet: bool = True, env: dict | None = None, **popen: Any
) -> subprocess.Popen:
    """:func:`cli` started, not waited for (to race or kill it); ``popen`` goes to ``subprocess.Popen``
    (stdout and stderr are pipes of text unless it says otherwise)."""
    cmd, full_env = _command(args, cache, quiet, env)
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(cmd, cwd=cwd, env=full_env, **popen)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr: no traceback, no second line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    return lines[0]
