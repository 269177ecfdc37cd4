"""The one atomic file write of the tool: a file is whole or absent, never half-written.

Every writer goes through here: temporary name beside the target, write, fsync, rename, fsync of the
directory (so the rename itself survives a power cut). Any failure removes the temporary file and
leaves the earlier file, if any, untouched; a full disk becomes the one-line
:func:`configs.diskspace.no_space_error` naming the target.

Writers that hold their content in memory call :func:`write_bytes_atomic`, :func:`write_text_atomic`
or :func:`write_json_atomic`. Libraries that insist on a file name (``faiss.write_index``,
``np.save``, h5py, PIL) write into the temporary path :func:`atomic_path` yields.

HDF5 cannot close a file whose flush failed on a full disk (the half-closed file later crashes the
interpreter when it is garbage-collected), so the cache's own HDF5 shards are serialized in memory and
written with :func:`write_bytes_atomic`, where the only I/O that can meet a full disk is a plain write.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.errors import UserError


def temp_path(path: Path) -> Path:
    """The default temporary name for ``path``: hidden, beside it (same file system), per process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # fsync flushes the file's pages whichever descriptor asks, so a library that wrote and closed
    # the file itself is made durable the same way as our own writes.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, tmp: Path | None = None, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content into; on success it is renamed to ``path``.

    The caller writes the whole file at the yielded path (``faiss.write_index(index, str(t))``,
    ``np.save``, ``h5py.File(t, "w")``, ``img.save(t, format=...)``). When the block ends normally the
    file is fsynced and renamed into place, then the directory is fsynced. When it raises, the
    temporary file is removed and ``path`` keeps its earlier content; a full disk is the one-line
    no-space error. ``tmp`` overrides the temporary name (it must be in ``path``'s folder).
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else temp_path(path)
    try:
        with disk_full_is_user_error(path, tmp):
            # A leftover of a killed process that had the same pid: writers that link or open
            # exclusively would otherwise fail on it.
            tmp.unlink(missing_ok=True)
            yield tmp
            if fsync:
                _fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(
    path: Path, data: bytes | bytearray | memoryview, *, tmp: Path | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` through a temporary name (fsync, rename): ``path`` is whole or absent.

    Any failure removes the temporary file; a full disk becomes the one-line no-space error.
    """
    with atomic_path(path, tmp=tmp, fsync=fsync) as t, open(t, "wb") as fh:
        fh.write(data)


def write_text_atomic(path: Path, text: str, *, tmp: Path | None = None, fsync: bool = True) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text (written as given: no newline translation)."""
    write_bytes_atomic(path, text.encode("utf-8"), tmp=tmp, fsync=fsync)


def write_json_atomic(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON (``indent`` spaces, keys in their order, a final newline) atomically.

    The JSON text is built before anything is written, so an object that cannot be serialized leaves
    the earlier file as it was and no temporary file.
    """
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_new_text(path: Path, text: str, *, replace: bool, option: str, overwrite_option: str) -> None:
    """:func:`write_text_atomic` that, unless ``replace``, never replaces a file that exists by then.

    The whole file is written under a temporary name and then hard-linked to ``path``, which fails if
    ``path`` exists (no check-then-write race); where hard links are not supported it falls back to a
    check and a rename. A refusal is one line naming ``option`` and ``overwrite_option``.
    """
    path = Path(path)
    if replace:
        write_text_atomic(path, text)
        return
    refused = UserError(f"{option}: {path} exists; give the path of a new file, or set {overwrite_option} to replace it")
    tmp = temp_path(path)
    try:
        with disk_full_is_user_error(path, tmp):
            tmp.unlink(missing_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(text.encode("utf-8"))
            _fsync_file(tmp)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise refused from None
            except OSError:
                if os.path.lexists(path):
                    raise refused from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
