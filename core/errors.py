"""The one error type that means "the user gave bad input".

Every stage raises :class:`UserError` for problems the user can fix (a missing file, a wrong layout,
a corrupt shard, a shape mismatch). The command line prints its message as one line on stderr and
exits with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input. The message names the thing that is wrong and how to fix it, in one line."""


def one_line(error: BaseException | str) -> str:
    """An error (or a message) folded onto one line, as stderr, a run.json or a table cell shows it.

    A message's lines are joined with spaces; an exception other than :class:`UserError` is prefixed
    with its type, since its message alone may not say what went wrong.
    """
    text = error if isinstance(error, str) else str(error)
    folded = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if isinstance(error, str) or isinstance(error, UserError):
        return folded or "error"
    return f"{type(error).__name__}: {folded}" if folded else type(error).__name__
