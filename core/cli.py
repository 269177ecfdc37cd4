"""The command line's error contract: every failure a user can cause ends as one line on stderr.

:func:`run_cli` runs a typer app so that a :class:`UserError` or a usage error prints ``error: …`` on
one line with exit code 2, warnings of a successful command print one line each after its output,
and Ctrl-C says how to resume.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
import warnings
from typing import Any

from cvgl.core.errors import UserError, one_line


def _cli_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """Every exception class called ``name`` that the installed typer may raise.

    typer up to 0.25 raises click's own classes; from 0.26 it vendors click as ``typer._click`` (and
    later has its own ``Exit`` and ``Abort``), which ``except click.…`` does not catch. Looking in
    every place keeps the error contract with each typer the dependency bounds allow.
    """
    found: list[type[BaseException]] = []
    for module in ("typer", "typer.exceptions", "typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        cls = getattr(mod, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


def _usage_message(e: BaseException) -> str:
    """A click usage error as one line, pointing at the help of the command it concerns."""
    msg = one_line(e.format_message())  # type: ignore[attr-defined]
    ctx = getattr(e, "ctx", None)
    if ctx is not None:
        msg += f" (see '{ctx.command_path} --help')"
    return msg


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Warnings of a successful command, one line each and each once, after its output."""
    seen: set[str] = set()
    for w in caught:
        line = one_line(f"warning: {w.message}")
        if line not in seen:
            seen.add(line)
            print(line, file=sys.stderr)


def _interrupted(t0: float) -> None:
    print(f"interrupted after {time.time() - t0:.0f} s; rerun the same command to resume", file=sys.stderr)
    sys.exit(130)


def _last_resort_message(e: BaseException) -> str | None:
    """The one line for an error a user's input caused where no check named it first, else None."""
    from cvgl.core.diskspace import is_no_space, no_space_error
    from cvgl.core.path_errors import path_error

    if is_no_space(e):
        return str(no_space_error(getattr(e, "filename", None) or "a file"))
    found = path_error(e)
    if found is not None:
        return str(found)
    if isinstance(e, RecursionError):
        return "the input nests too deeply to process (RecursionError); flatten the config, override or file given"
    if isinstance(e, UnicodeDecodeError):
        return (
            f"an input file is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); "
            "save it as UTF-8 (rerun with --debug to see which file)"
        )
    if isinstance(e, MemoryError):
        return (
            "out of memory (MemoryError): an input declares more data than this machine can hold; "
            "check the file's shape, or run on a machine with more memory"
        )
    return None


def run_cli(app: Any) -> None:
    """Run a typer ``app`` as the console entry point: bad input → one line on stderr, exit code 2."""
    debug = "--debug" in sys.argv
    usage_errors = _cli_exceptions("ClickException")
    exits = _cli_exceptions("Exit")
    aborts = _cli_exceptions("Abort")
    t0 = time.time()
    caught: list[warnings.WarningMessage] = []
    try:
        # Library warnings (torch, numpy, …) would add lines around an error: they are recorded, then
        # dropped on an error and shown one line each after a successful command. --debug shows them
        # as Python prints them.
        with warnings.catch_warnings(record=not debug) as log:
            caught = log if log is not None else []
            result = app(prog_name="pipeline", standalone_mode=False)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError, MemoryError, UnicodeDecodeError) as e:
        # Last resort for what a user's input causes outside the checks made for it: a full disk, a
        # read-only or forbidden folder, a name too long, input nested too deeply or too large.
        if debug:
            raise
        message = _last_resort_message(e)
        if message is None:
            raise
        print(f"error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)
    except exits as e:
        _show_warnings(caught)
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except usage_errors as e:
        code = e.exit_code  # type: ignore[attr-defined]
        if type(e).__name__ == "NoArgsIsHelpError":
            # A bare group (`pipeline`, `pipeline cache`) shows its help; some typers print it
            # themselves and leave the message empty.
            text = e.format_message()  # type: ignore[attr-defined]
            if text.strip():
                print(text)
            sys.exit(code)
        if debug:
            traceback.print_exc()
        print(f"error: {_usage_message(e)}", file=sys.stderr)
        sys.exit(2 if code in (1, 2) else code)
    except (KeyboardInterrupt, *aborts):
        _interrupted(t0)
    _show_warnings(caught)
    # Without standalone mode an Exit comes back as its code, and typer turns Ctrl-C into Exit(130);
    # the commands themselves return None.
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:
        if result == 130:
            _interrupted(t0)
        sys.exit(result)
