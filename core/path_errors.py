"""Paths the system refuses, as one line: read-only or forbidden folders, names too long, non-folders.

A user's path can fail in ways that are not the tool's bugs: a read-only filesystem (``EROFS``), a
folder without write permission (``EACCES``/``EPERM``), a name over the system's limit
(``ENAMETOOLONG``, e.g. a 120 KB ``dataset.root``), a file where a folder is expected (``ENOTDIR``).
:func:`require_writable_folder` checks an output folder before anything is written into it;
:func:`path_error` words any such ``OSError`` met later, naming the path (shortened when it is long),
for the command line's last-resort handler.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from cvgl.core.errors import UserError

# errno → what it means for the user, in words.
PATH_ERRNOS = {
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted there",
    errno.ENAMETOOLONG: "the name is too long for the system",
    errno.ENOTDIR: "a part of it is not a folder",
    errno.ELOOP: "it is a loop of symbolic links",
    errno.EISDIR: "it is a folder, not a file",
}
_SHOWN = 120  # characters of a long path shown in a message


def show_path(path: str | os.PathLike[str] | bytes) -> str:
    """``path`` for a one-line message: whole when short, else its start and its length."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    text = text.replace("\n", "\\n")
    if len(text) <= _SHOWN:
        return text
    return f"{text[:_SHOWN]}… ({len(text):,} characters)"


def path_error(exc: BaseException) -> UserError | None:
    """The one-line error for an ``OSError`` that a user's path caused, or None for any other error."""
    if not isinstance(exc, OSError) or exc.errno not in PATH_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else "a path"
    what = PATH_ERRNOS[exc.errno]
    if exc.errno == errno.ENAMETOOLONG:
        fix = "give a shorter path"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "give a folder you can write (out=, --cache-dir) and files you can read"
    else:
        fix = "check the path"
    return UserError(f"cannot use {show_path(where)}: {what}; {fix}")


def require_writable_folder(path: str | os.PathLike[str], what: str, fix: str) -> Path:
    """Create ``path`` (and its parents) if needed and check it can be written; else one line.

    ``what`` names the folder (``the cache folder``), ``fix`` says how to give another one.
    """
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror or type(e).__name__
        raise UserError(f"cannot create {what} {show_path(p)}: {reason}; {fix}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        reason = "the filesystem is read-only" if _read_only_fs(p) else "permission denied"
        raise UserError(f"cannot write into {what} {show_path(p)}: {reason}; {fix}")
    return p


def _read_only_fs(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_path_usable(path: str | os.PathLike[str], what: str, fix: str) -> None:
    """One line when the system cannot even look ``path`` up (too long, a loop, a file as a parent).

    A path that does not exist passes: whether it must is the caller's question.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror or type(e).__name__
        raise UserError(f"{what} {show_path(path)} cannot be used: {reason}; {fix}") from None


def _kind(mode: int) -> str:
    for test, word in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return word
    return "not a regular file"


def require_regular_file(path: Path, what: str, fix: str = "give a regular file") -> os.stat_result:
    """``path``'s stat (links followed) when it is a regular file, else a one-line :class:`UserError`.

    Nothing else is ever opened for reading: a FIFO or a terminal blocks, a device never ends.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{what} {show_path(path)} does not exist; {fix}") from None
    except OSError as e:
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror or type(e).__name__
        raise UserError(f"{what} {show_path(path)} cannot be read: {reason}; {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {show_path(path)} is {_kind(st.st_mode)}, not a file; {fix}")
    return st


def read_text_file(path: str | os.PathLike[str], what: str, fix: str) -> str:
    """A user's text file as UTF-8 text, or one line naming it: ``what`` names the file (``VIGOR split
    file``), ``fix`` says what to give instead. Only a regular file is opened (a FIFO would block).
    A byte that is not UTF-8 is named with its line and offset, so it can be found and fixed.
    """
    p = Path(path)
    require_regular_file(p, what, fix)
    try:
        data = p.read_bytes()
    except OSError as e:
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror or type(e).__name__
        raise UserError(f"{what} {show_path(p)} cannot be read: {reason}; {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(
            f"{what} {show_path(p)} is not UTF-8 text (line {line}, byte {e.start}: "
            f"{data[e.start : e.start + 1]!r}); save it as UTF-8"
        ) from None
