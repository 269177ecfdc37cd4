"""The command line's last resort: OS path errors, RecursionError and MemoryError as one line."""

from __future__ import annotations

import errno

import pytest
from cvgl.core.cli import _last_resort_message
from cvgl.core.errors import UserError
from cvgl.core.path_errors import check_path_usable, require_writable_folder, show_path


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"), (errno.ENAMETOOLONG, "too long")],
)
def test_path_errors_name_the_path_and_the_problem(code, words):
    msg = _last_resort_message(OSError(code, "x", "/data/runs/out"))
    assert msg is not None and "/data/runs/out" in msg and words in msg and "\n" not in msg


def test_a_long_path_is_shortened_in_the_message():
    msg = _last_resort_message(OSError(errno.ENAMETOOLONG, "x", "/" + "a" * 120_000))
    assert msg is not None and len(msg) < 400 and "120,001 characters" in msg


def test_recursion_and_memory_errors_are_one_line():
    assert "nests too deeply" in _last_resort_message(RecursionError("maximum recursion depth"))
    assert "out of memory" in _last_resort_message(MemoryError())


def test_other_errors_keep_their_traceback():
    assert _last_resort_message(OSError(errno.EIO, "I/O error", "/x")) is None
    assert _last_resort_message(RuntimeError("a bug")) is None


def test_show_path_keeps_short_paths_whole():
    assert show_path("/a/b") == "/a/b"


def test_require_writable_folder_refuses_a_file_as_a_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="cannot create the run folder"):
        require_writable_folder(tmp_path / "f" / "sub", "the run folder", "set out=")


def test_check_path_usable_passes_missing_and_refuses_too_long(tmp_path):
    check_path_usable(tmp_path / "missing", "dataset.root", "fix")
    with pytest.raises(UserError, match="too long"):
        check_path_usable(tmp_path / ("a" * 5000), "dataset.root", "fix")


def test_a_text_file_that_is_not_utf8_is_one_line():
    try:
        b"ab\xffc".decode("utf-8")
    except UnicodeDecodeError as e:
        msg = _last_resort_message(e)
    assert msg is not None and "not UTF-8" in msg and "byte 2" in msg
