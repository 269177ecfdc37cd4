"""A full disk is bad input, not a crash: one line naming the file, partial files removed.

Libraries report a full disk in different ways: Python's ``open``/``write`` raise ``OSError`` with
``errno`` ENOSPC (or EDQUOT for a quota), HDF5 and torch raise ``RuntimeError`` carrying the errno in
their message. Worse, HDF5 cannot close a file whose flush failed, and the half-closed file later
crashes the interpreter when it is garbage-collected. So every writer of the tool serializes into
memory first (HDF5 images, torch and safetensors blobs) and writes the bytes with
:func:`write_bytes_atomic`: the only I/O that can meet a full disk is a plain ``write`` here.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from configs.errors import UserError

NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How HDF5 and torch word it inside a RuntimeError (they lose the errno attribute on the way).
_NO_SPACE_TEXT = (f"errno = {errno.ENOSPC},", f"errno = {errno.EDQUOT},", "No space left on device")


def is_no_space(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the device or the quota is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS:
            return True
        if isinstance(e, (OSError, RuntimeError)) and any(t in str(e) for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def no_space_error(path: str | os.PathLike[str]) -> UserError:
    """The one-line error for a full device (or quota) while writing ``path``."""
    return UserError(
        f"no space left on the device writing {path}; free some space there (or point --cache-dir / out= "
        "at another disk) and rerun"
    )


def _remove(paths: tuple[str | os.PathLike[str], ...]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            Path(p).unlink(missing_ok=True)


@contextlib.contextmanager
def disk_full_is_user_error(
    path: str | os.PathLike[str], *partial: str | os.PathLike[str]
) -> Iterator[None]:
    """Turn a full disk inside the block into :func:`no_space_error` for ``path``, removing ``partial``."""
    try:
        yield
    except UserError:
        raise
    except (OSError, RuntimeError) as e:
        if not is_no_space(e):
            raise
        _remove(partial)
        raise no_space_error(path) from None


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


def write_bytes_atomic(
    path: Path, data: bytes | bytearray | memoryview, *, tmp: Path | None = None, fsync: bool = True
) -> None:
    """Write ``data`` to ``path`` through a temporary name (fsync, rename): ``path`` is whole or absent.

    Any failure removes the temporary file; a full disk becomes :func:`no_space_error`.
    """
    tmp = tmp or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_full_is_user_error(path, tmp):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        _remove((tmp,))
        raise
    if fsync:
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, *, fsync: bool = True) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)
