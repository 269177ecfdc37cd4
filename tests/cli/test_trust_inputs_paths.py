"""Folders the system refuses: an unwritable out= or --cache-dir, a dataset.root too long to look up."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import cli, one_error_line

# Real processes that import torch: several seconds each on a shared machine.
pytestmark = pytest.mark.slow


@pytest.fixture()
def unwritable(tmp_path):
    """A folder path nothing can be created in: under a 0o555 folder, or (as root, for whom
    permissions do not apply) under /proc, where no folder can be made."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):
        ro.chmod(0o755)
        yield Path("/proc") / f"cvgl-test-{uuid.uuid4().hex[:8]}"
        return
    yield ro / "inside"
    ro.chmod(0o755)


def test_an_unwritable_cache_dir_is_one_line_before_any_work(tmp_path, unwritable):
    p = cli("--cache-dir", str(unwritable), "extract", "demo", "out=r", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    line = one_error_line(p)
    assert "cache folder" in line and str(unwritable) in line and "--cache-dir" in line
    assert not (tmp_path / "r").exists()


def test_an_unwritable_out_is_one_line(tmp_path, unwritable):
    p = cli("extract", "demo", f"out={unwritable}", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    line = one_error_line(p)
    assert "run folder" in line and str(unwritable) in line and "out=" in line


def test_a_dataset_root_too_long_for_the_system_is_one_line(tmp_path):
    root = tmp_path / ("a" * 120_000)
    for layout in ("synthetic", "folder"):
        p = cli("extract", "demo", f"dataset.layout={layout}", f"dataset.root={root}", "out=r",
                cache=tmp_path / "c", cwd=tmp_path, timeout=120)
        line = one_error_line(p)
        assert "dataset.root" in line or "dataset root" in line
        assert "too long" in line and len(line) < 600
