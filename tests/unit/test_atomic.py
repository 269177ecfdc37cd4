"""The one atomic write: a file is whole or absent, the earlier file survives a failed write."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import numpy as np
import pytest
from cvgl.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from cvgl.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _old_file(tmp_path: Path) -> Path:
    path = tmp_path / "out" / "metrics.json"
    path.parent.mkdir()
    write_json_atomic(path, {"R@1": 50.0})
    return path


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b'{"R@1": 9')  # half of the new content is on disk when the writer fails
            raise RuntimeError("writer crashed")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_json_that_cannot_be_serialized_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"R@1": 60.0, "model": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_a_library_writer_gets_a_file_name_and_its_file_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "descriptors.npy"
    write_text_atomic(path, "old")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.arange(5))
    np.testing.assert_array_equal(np.load(path), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["descriptors.npy"]


def test_a_full_disk_is_one_line_naming_the_file_and_removes_the_partial_file(tmp_path):
    path = _old_file(tmp_path)
    before = path.read_bytes()
    with pytest.raises(UserError) as err:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    msg = str(err.value)
    assert msg.startswith(f"no space left on the device writing {path}") and "\n" not in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


# Renames that publish a file are core/atomic.py's job alone; datasets/synthetic.py renames a whole
# generated folder into place (a directory publish, fsynced there).
_RENAME = re.compile(r"\bos\.(replace|rename)\(|\.rename\(")
_ALLOWED = {"core/atomic.py": {"replace"}, "datasets/synthetic.py": {"rename"}}


def test_no_writer_renames_files_by_hand_outside_the_atomic_module():
    offenders = []
    files = [REPO / "pipeline.py"]
    for pkg in ("core", "configs", "datasets", "cache", "extract", "align", "retrieve", "orchestration"):
        files += sorted((REPO / pkg).rglob("*.py"))
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            m = _RENAME.search(line.split("#", 1)[0])
            if m and (m.group(1) or "rename") not in _ALLOWED.get(rel, set()):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "write through cvgl.core.atomic instead:\n" + "\n".join(offenders)
