"""Where the tool may write: the one rule for outputs a user names by path, and the cache's own ground.

Outputs given by path (``retrieve.answer``, the files ``cache export --out`` writes) follow
:func:`output_file`:

- a relative path is resolved inside the command's folder (the run folder) and must stay inside it,
  also once symlinks are resolved (``../../x.txt`` is refused);
- the path must name a new file, unless the command's overwrite option is given; even then only a
  regular file is replaced (never a folder, a device such as ``/dev/null``, or a FIFO);
- a name the tool itself writes in that folder (``metrics.json``, ``run.json``, ``config.yaml``, …) is
  refused, so the tool's own file can never replace the user's output or the other way round;
- a folder given as the path, or a place where nothing can be created (``/proc``, a read-only
  file system), is one line.

:func:`check_apart` keeps a run folder and the cache root apart: a run removes its earlier results
by name, and in the cache those names are the cache's own files (a model's ``isms.safetensors``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from pathlib import Path

from cvgl.core.errors import UserError

# What a run writes directly in its folder (and in a retrieval's output subfolder). A rerun removes the
# result files among these before it starts (core/run_folder.py); none of them may be a user's output.
RUN_RECORD_FILES = ("run.json", "config.yaml")
RESULT_FILES = (
    "metrics.json",
    "per_query.csv",
    "recall_curve.png",
    "report.html",
    "history.jsonl",
    "stream1_geoalign.t",
)
RESULT_DIRS = ("thumbs",)
CHECKPOINT_NAMES = ("isms", "stream1", "emcvgl", "cvft", "vgg_conv", "vgg_gp")
MODEL_INDEX = "model-files.json"


def run_folder_names() -> frozenset[str]:
    """Every name the tool writes directly inside a run folder."""
    ckpt = {f"{n}{ext}" for n in CHECKPOINT_NAMES for ext in (".safetensors", ".json")}
    return frozenset({*RUN_RECORD_FILES, *RESULT_FILES, *RESULT_DIRS, MODEL_INDEX, *ckpt})


def _resolved(path: Path) -> Path:
    """``path`` absolute with symlinks resolved as far as they exist (strict=False)."""
    return Path(os.path.abspath(path)).resolve()


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def check_apart(out: str | os.PathLike, cache_root: str | os.PathLike, *, what: str = "out=") -> None:
    """Refuse an output folder inside the cache root, and a cache root inside the output folder.

    The cache's files (models, entries, aliases) carry names a run writes and removes by name; a run
    folder in the cache would delete a cached checkpoint on its next run, and a cache inside a run
    folder mixes the cache's files with the run's.
    """
    o, c = _resolved(Path(out)), _resolved(Path(cache_root))
    if _inside(o, c):
        raise UserError(
            f"{what}{out} is inside the cache root {c}; the cache's files are its own, so give an output "
            "folder outside the cache (e.g. out=runs/NAME)"
        )
    if _inside(c, o):
        raise UserError(
            f"the cache root {c} is inside {what}{out}; give an output folder that does not hold the cache, "
            "or move the cache with --cache-dir / PIPELINE_CACHE_DIR"
        )


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def writable_folder(folder: Path, *, what: str) -> Path:
    """Create ``folder`` (and its parents) if needed and prove a file can be created in it.

    Anything that stops it (an existing file in the way, ``/proc``, a read-only file system, missing
    permission) is one line naming ``what`` (the option that gave the folder).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} exists and is not a folder; give a folder (new or existing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise UserError(f"{what} {folder}: a parent of it is not a folder; give a folder that can be created") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"{what} {folder}: no space left on the device; free some space or choose another folder") from None
        raise UserError(
            f"{what} {folder} cannot be written ({_os_reason(e)}); give a folder you can write to"
        ) from None
    return folder


def output_file(
    given: str | os.PathLike,
    folder: Path,
    *,
    option: str,
    overwrite: bool = False,
    overwrite_option: str,
    reserved: Collection[str] = (),
) -> Path:
    """The file a user-named output is written to, checked by the one rule (module docstring).

    ``folder`` is the command's folder (a relative ``given`` lands in it); ``option`` names the setting
    in messages; ``overwrite_option`` is how the user allows an existing file to be replaced;
    ``reserved`` are the names the tool writes in ``folder`` itself. The folder the file goes into is
    created and proven writable; nothing else is written.
    """
    text = os.fspath(given)
    if not str(text).strip():
        raise UserError(f"{option} is empty; give a file name such as answer.txt")
    raw = Path(text).expanduser()
    base = _resolved(folder)
    if raw.is_absolute():
        target = _resolved(raw)
    else:
        target = _resolved(base / raw)
        if not _inside(target, base) or target == base:
            raise UserError(
                f"{option}={text} leads outside the run folder {base}; a relative path stays inside the run "
                "folder, so give a name inside it or an absolute path"
            )
    if str(text).endswith(("/", os.sep)) or target.is_dir():
        raise UserError(f"{option}={text} is a folder ({target}); give a file name, e.g. {option}={Path(text) / 'answer.txt'}")
    if target.parent == base and target.name in reserved:
        raise UserError(
            f"{option}={text}: {target.name} is a file the tool itself writes in {base}; give another name"
        )
    if _inside(target, base):
        first = target.relative_to(base).parts[0]
        if first in reserved and first != target.name:
            raise UserError(f"{option}={text} lies inside {base / first}, which the tool itself writes; give another name")
    if os.path.lexists(target) or os.path.lexists(raw):
        try:
            st = os.stat(target)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise UserError(f"{option}={text} exists and is not a regular file; give the path of a new file")
        if not overwrite:
            raise UserError(
                f"{option}={text} exists ({target}); give the path of a new file, or set {overwrite_option} "
                "to replace it"
            )
    writable_folder(target.parent, what=f"{option}={text}: the folder")
    return target


def new_file_only(path: Path, *, option: str, overwrite_option: str, overwrite: bool) -> None:
    """Refuse an existing ``path`` unless ``overwrite``; never anything but a regular file."""
    if not os.path.lexists(path):
        return
    st = os.stat(path) if path.exists() else None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UserError(f"{option}: {path} exists and is not a regular file; move it away or choose another folder")
    if not overwrite:
        raise UserError(
            f"{option}: {path} exists; move it away, choose another folder, or add {overwrite_option} to replace it"
        )
