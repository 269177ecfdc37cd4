"""retrieve.answer follows the one rule for outputs given by path (core/outputs.py), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli, one_error_line

# Each case is a real retrieve process (a few seconds each on a shared machine).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """A cache with a tiny query and gallery entry (imported arrays: no backbone runs)."""
    tmp = tmp_path_factory.mktemp("answer")
    cache = tmp / "cache"
    rng = np.random.default_rng(0)
    for alias, n, label in (("q", 4, -1), ("g", 12, -2)):
        np.save(tmp / f"{alias}.npy", rng.standard_normal((n, 8)).astype(np.float32))
        np.save(tmp / f"{alias}_labels.npy", np.full(n, label, np.int64))
        (tmp / f"{alias}_names.txt").write_text("".join(f"{alias}/{i:04d}.jpg\n" for i in range(n)))
        p = cli("cache", "import", f"{alias}.npy", "--labels", f"{alias}_labels.npy", "--names",
                f"{alias}_names.txt", "--alias", alias, cache=cache, cwd=tmp)
        assert p.returncode == 0, p.stderr
    return tmp, cache


def _retrieve(world, *extra: str, out: str = "r"):
    tmp, cache = world
    return cli("retrieve", "demo", "query=q", "gallery=g", "retrieve.report=false", f"out={out}", *extra,
               cache=cache, cwd=tmp)


def test_relative_answer_escaping_the_run_folder_is_refused_and_the_file_kept(world):
    tmp, _ = world
    victim = tmp / "x.txt"
    victim.write_text("mine\n")
    line = one_error_line(_retrieve(world, "retrieve.answer=../x.txt", out="r1"))
    assert "outside the run folder" in line
    assert victim.read_text() == "mine\n"


def test_absolute_existing_answer_needs_the_overwrite_option(world):
    tmp, _ = world
    victim = tmp / "abs_answer.txt"
    victim.write_text("mine\n")
    line = one_error_line(_retrieve(world, f"retrieve.answer={victim}", out="r2"))
    assert "retrieve.answer_overwrite=true" in line
    assert victim.read_text() == "mine\n"
    p = _retrieve(world, f"retrieve.answer={victim}", "retrieve.answer_overwrite=true", out="r2")
    assert p.returncode == 0, p.stderr
    assert victim.read_text() != "mine\n" and len(victim.read_text().splitlines()) == 4


def test_absolute_new_answer_is_written(world):
    tmp, _ = world
    p = _retrieve(world, f"retrieve.answer={tmp / 'new' / 'answer.txt'}", out="r3")
    assert p.returncode == 0, p.stderr
    assert len((tmp / "new" / "answer.txt").read_text().splitlines()) == 4


@pytest.mark.parametrize("name", ["metrics.json", "thumbs/a.txt"])
def test_a_name_the_tool_writes_is_refused(world, name):
    line = one_error_line(_retrieve(world, f"retrieve.answer={name}", out="r4"))
    assert "the tool itself writes" in line


def test_a_folder_as_the_answer_is_one_line(world):
    tmp, _ = world
    (tmp / "adir").mkdir()
    line = one_error_line(_retrieve(world, f"retrieve.answer={tmp / 'adir'}", out="r5"))
    assert "is a folder" in line


@pytest.mark.parametrize("path", ["devnull", "/proc/cvgl-no-such/answer.txt"])
def test_unwritable_or_special_answer_paths_are_one_line(world, path):
    tmp, _ = world
    if path == "devnull":
        # A link to /dev/null, not /dev/null itself: a tool that renames over the path (as root) then
        # replaces the link, never the machine's /dev/null.
        path = str(tmp / "devnull")
        if not Path(path).is_symlink():
            Path(path).symlink_to("/dev/null")
    one_error_line(_retrieve(world, f"retrieve.answer={path}", "retrieve.answer_overwrite=true", out="r6"))
    assert Path("/dev/null").is_char_device()


def test_rerun_replaces_its_own_answer_but_a_users_file_in_the_folder_is_kept(world):
    tmp, _ = world
    for _ in range(2):  # the second run removes the first run's answer.txt (its own) and writes it again
        p = _retrieve(world, "retrieve.answer=answer.txt", out="r7")
        assert p.returncode == 0, p.stderr
    assert json.loads((tmp / "r7" / "metrics.json").read_text())["answer"] == str((tmp / "r7" / "answer.txt").resolve())
    (tmp / "r7" / "notes.txt").write_text("mine\n")
    line = one_error_line(_retrieve(world, "retrieve.answer=notes.txt", out="r7"))
    assert "exists" in line
    assert (tmp / "r7" / "notes.txt").read_text() == "mine\n"
