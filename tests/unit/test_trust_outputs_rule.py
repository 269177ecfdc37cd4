"""The one rule for outputs given by path (core/outputs.py), and the cache/run-folder separation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cvgl.core.atomic import write_new_text
from cvgl.core.errors import UserError
from cvgl.core.outputs import check_apart, output_file, run_folder_names, writable_folder


def _out(given, folder, overwrite=False):
    return output_file(given, folder, option="retrieve.answer", overwrite=overwrite,
                       overwrite_option="retrieve.answer_overwrite=true", reserved=run_folder_names())


def test_relative_path_lands_in_the_folder(tmp_path):
    assert _out("sub/a.txt", tmp_path / "run") == (tmp_path / "run" / "sub" / "a.txt").resolve()


@pytest.mark.parametrize("given", ["../x.txt", "../../x.txt", "sub/../../x.txt", "."])
def test_relative_path_may_not_leave_the_folder(tmp_path, given):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError):
        _out(given, tmp_path / "run")


def test_a_symlink_leading_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside the run folder"):
        _out("link/a.txt", tmp_path / "run")


def test_existing_file_needs_overwrite_and_only_a_regular_file_is_replaced(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("mine")
    with pytest.raises(UserError, match="retrieve.answer_overwrite=true"):
        _out(str(f), tmp_path / "run")
    assert _out(str(f), tmp_path / "run", overwrite=True) == f.resolve()
    with pytest.raises(UserError, match="not a regular file"):
        _out("/dev/null", tmp_path / "run", overwrite=True)
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("name", sorted(run_folder_names()))
def test_the_tools_own_names_are_refused(tmp_path, name):
    with pytest.raises(UserError, match="the tool itself writes"):
        _out(name, tmp_path / "run")


def test_a_folder_is_one_error(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        _out(str(tmp_path), tmp_path / "run")
    with pytest.raises(UserError, match="is a folder"):
        _out("newdir/", tmp_path / "run")


def test_places_where_nothing_can_be_created(tmp_path):
    for p in ("/proc/self/answer.txt", "/proc/cvgl-none/answer.txt", "/sys/answer.txt"):
        with pytest.raises(UserError):
            _out(p, tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        writable_folder(tmp_path / "file", what="--out")
    with pytest.raises(UserError):
        writable_folder(tmp_path / "file" / "below", what="--out")


def test_write_new_text_never_replaces_a_file_that_appeared(tmp_path):
    f = tmp_path / "a.txt"
    write_new_text(f, "one", replace=False, option="o", overwrite_option="ow")
    with pytest.raises(UserError, match="ow"):
        write_new_text(f, "two", replace=False, option="o", overwrite_option="ow")
    assert f.read_text() == "one" and os.listdir(tmp_path) == ["a.txt"]
    write_new_text(f, "two", replace=True, option="o", overwrite_option="ow")
    assert f.read_text() == "two"


def test_out_and_cache_are_kept_apart(tmp_path):
    cache = tmp_path / "cache"
    for inside in (cache, cache / "models" / "abc", cache / "x" / ".." / "entries"):
        with pytest.raises(UserError, match="inside the cache root"):
            check_apart(inside, cache)
    with pytest.raises(UserError, match="is inside out="):
        check_apart(tmp_path, cache)
    check_apart(tmp_path / "runs" / "a", cache)  # siblings are fine
    (tmp_path / "alias").symlink_to(cache, target_is_directory=True)
    cache.mkdir()
    with pytest.raises(UserError):
        check_apart(tmp_path / "alias" / "models", cache)


def test_a_rerun_never_empties_a_model_folder(tmp_path):
    """A folder holding a model's index (a cache's model folder, e.g. one moved out of the cache) keeps
    the model's files when a run starts there, though they carry the names a run removes."""
    import dataclasses
    import json

    from cvgl.core.run_folder import RunFolder

    @dataclasses.dataclass
    class Cfg:
        out: str
        name: str = "t"
        seed: int = 0

    folder = tmp_path / "moved-model"
    folder.mkdir()
    for name in ("isms.safetensors", "isms.json", "history.jsonl"):
        (folder / name).write_text("x")
    (folder / "model-files.json").write_text(json.dumps({"files": ["history.jsonl", "isms.json", "isms.safetensors"]}))
    (folder / "run.json").write_text(json.dumps({"status": "complete", "model": {"files": ["isms.safetensors"]}}))
    RunFolder(Cfg(str(folder)), "run", cache_root=tmp_path / "cache")
    assert all((folder / n).is_file() for n in ("isms.safetensors", "isms.json", "history.jsonl"))


def test_compare_writes_new_files_only_unless_overwrite(tmp_path):
    from cvgl.retrieve.compare import write_comparison

    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.csv").write_text("mine\n")
    with pytest.raises(UserError, match="--overwrite"):
        write_comparison("| a |\n", "a\n", out)
    assert (out / "comparison.csv").read_text() == "mine\n" and not (out / "comparison.md").exists()
    write_comparison("| a |\n", "a\n", out, overwrite=True)
    assert (out / "comparison.csv").read_text() == "a\n"
    with pytest.raises(UserError, match="not a folder"):
        write_comparison("| a |\n", "a\n", Path("/dev/null"))


def test_export_of_an_unknown_format_is_one_error_before_anything_is_written(tmp_path):
    from cvgl.cache.interop import export_entry
    from cvgl.cache.store import CacheStore

    with pytest.raises(UserError, match="unknown export format"):
        export_entry(CacheStore(tmp_path / "cache"), "x", fmt="bogus", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
