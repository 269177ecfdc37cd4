"""The one error type that means "the user gave bad input".

Every stage raises :class:`UserError` for problems the user can fix (a missing file, a wrong layout,
a corrupt shard, a shape mismatch). The command line prints its message as one line on stderr and
exits with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input. The message names the thing that is wrong and how to fix it, in one line."""
