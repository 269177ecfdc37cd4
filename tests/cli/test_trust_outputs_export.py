"""`cache export --out` follows the rule for outputs: one line for every place it cannot or may not write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli, one_error_line


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("export")
    cache = tmp / "cache"
    rng = np.random.default_rng(0)
    np.save(tmp / "d.npy", rng.standard_normal((5, 4)).astype(np.float32))
    np.save(tmp / "l.npy", np.arange(5, dtype=np.int64))
    p = cli("cache", "import", "d.npy", "--labels", "l.npy", "--alias", "e", cache=cache, cwd=tmp)
    assert p.returncode == 0, p.stderr
    return tmp, cache


def _export(world, out: str, *extra: str):
    tmp, cache = world
    return cli("cache", "export", "e", "--out", out, *extra, cache=cache, cwd=tmp)


@pytest.mark.parametrize("out", ["/dev/null", "/proc/self/cvgl-export", "/proc/cvgl-none/x", "afile"])
def test_unusable_out_is_one_line(world, out):
    tmp, _ = world
    (tmp / "afile").write_text("mine\n")
    line = one_error_line(_export(world, out))
    assert "--out" in line
    assert (tmp / "afile").read_text() == "mine\n"
    assert Path("/dev/null").is_char_device()


def test_existing_files_are_kept_unless_overwrite(world):
    tmp, _ = world
    assert _export(world, "ex").returncode == 0
    (tmp / "ex" / "names.txt").write_text("mine\n")
    line = one_error_line(_export(world, "ex"))
    assert "exists" in line and "--overwrite" in line
    assert (tmp / "ex" / "names.txt").read_text() == "mine\n"
    p = _export(world, "ex", "--overwrite")
    assert p.returncode == 0, p.stderr
    assert len((tmp / "ex" / "names.txt").read_text().splitlines()) == 5


def test_a_special_file_in_place_of_an_output_is_never_replaced(world):
    tmp, _ = world
    (tmp / "ex2").mkdir()
    (tmp / "ex2" / "labels.npy").symlink_to("/dev/null")
    line = one_error_line(_export(world, "ex2", "--overwrite"))
    assert "not a regular file" in line
    assert (tmp / "ex2" / "labels.npy").is_symlink() and Path("/dev/null").is_char_device()
