"""A full disk is bad input, not a crash: one line naming the file, partial files removed.

Libraries report a full disk in different ways: Python's ``open``/``write`` raise ``OSError`` with
``errno`` ENOSPC (or EDQUOT for a quota), HDF5 and torch raise ``RuntimeError`` carrying the errno in
their message. This module recognises all of them; the file writes themselves live in
:mod:`configs.atomic`.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from cvgl.core.errors import UserError

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

