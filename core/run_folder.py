"""Run folders: every command writes its resolved config, versions, cache keys and seed here.

``run.json`` says ``"status": "running"`` until the stage ends; only then does it become
``"complete"``, so an interrupted run is never mistaken for a finished one. A rerun into the folder
of an earlier run first removes that run's results (only the files this tool writes), so a failed
rerun leaves no earlier metrics beside its ``"failed"`` status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from cvgl.core.atomic import write_json_atomic, write_text_atomic
from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.errors import UserError
from cvgl.core.path_errors import require_writable_folder
from cvgl.core.outputs import CHECKPOINT_NAMES, MODEL_INDEX, RESULT_DIRS, RESULT_FILES, check_apart, run_folder_names

_PACKAGES = (
    "cvgl-pipeline",
    "torch",
    "numpy",
    "h5py",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "transformers",
    "safetensors",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


# What a run of this tool writes into its folder (and into a retrieval's output subfolder) is listed in
# core/outputs.py. A rerun into the same out= folder removes those results, and only those, from the
# earlier run before it starts: a failed rerun must not leave the earlier results beside its "failed" status.
_RESULT_FILES = RESULT_FILES
_RESULT_DIRS = RESULT_DIRS
_CHECKPOINT_NAMES = CHECKPOINT_NAMES


def _remove_earlier_results(folder: Path) -> list[str]:
    """Remove the earlier run's results from ``folder`` (a run folder: it holds a run.json); returns them.

    Only names this tool writes are touched: the files above, ``thumbs/``, the checkpoints (a
    ``<method>.safetensors`` with its ``.json``), the same in retrieval subfolders (those holding a
    metrics.json or a report), and such subfolders once empty. Any other file stays.
    """
    removed: list[str] = []
    if (folder / MODEL_INDEX).exists():
        # A trained model's folder in the cache (its files have the names a run removes): never touched.
        return removed

    def clean(d: Path) -> None:
        answer = _earlier_answer(d)
        if answer is not None:
            answer.unlink(missing_ok=True)
            removed.append(str(answer))
        for name in _RESULT_FILES:
            p = d / name
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
                removed.append(str(p))
        for name in _CHECKPOINT_NAMES:
            for p in (d / f"{name}.safetensors", d / f"{name}.json"):
                if p.is_file() or p.is_symlink():
                    p.unlink(missing_ok=True)
                    removed.append(str(p))
        for name in _RESULT_DIRS:
            p = d / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p))

    clean(folder)
    # The model files the earlier run linked in (any registered method's, not only the built-in names),
    # as its run.json lists them; only plain file names directly in the folder are taken.
    for name in _earlier_model_files(folder):
        p = folder / name
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(str(p))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        if (sub / "metrics.json").is_file() or (sub / "report.html").is_file():
            clean(sub)
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when nothing else is left in it
    return removed


def _earlier_answer(folder: Path) -> Path | None:
    """The answer file (``retrieve.answer``) the earlier run wrote inside ``folder``, per its metrics.json.

    Only a regular file that lies inside ``folder`` counts: an answer written elsewhere (an absolute
    path) is the user's to keep, and a rerun must be told to replace it.
    """
    try:
        info = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        answer = info.get("answer") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None
    if not isinstance(answer, str) or not answer:
        return None
    p = Path(answer)  # recorded resolved, hence absolute
    try:
        base, target = folder.resolve(), p.resolve()
    except (OSError, RuntimeError):
        return None
    if not p.is_absolute() or target == base or not target.is_relative_to(base):
        return None
    if p.is_symlink() or not p.is_file() or target.name in run_folder_names():
        return None
    return p


def _earlier_model_files(folder: Path) -> list[str]:
    """File names the earlier run's ``run.json`` lists under ``model.files`` (plain names only)."""
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        files = info.get("model", {}).get("files", []) if isinstance(info, dict) else []
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(files, list):
        return []
    return [f for f in files if isinstance(f, str) and f and f == Path(f).name and f not in (".", "..")]


class RunFolder:
    """The output folder of one command (``out=DIR``, default ``runs/<stage>-<timestamp>``)."""

    def __init__(self, cfg: Any, stage: str, *, cache_root: Path | None = None) -> None:
        # Under torchrun (RANK and WORLD_SIZE > 1 set) every rank runs the command; only rank 0 keeps
        # a run folder. The others write theirs to a private temporary folder that finish() deletes
        # (fail() keeps it, with the error in its run.json).
        rank = os.environ.get("RANK", "0")
        world = os.environ.get("WORLD_SIZE", "1")
        self.scratch = rank not in ("", "0") and world.isdigit() and int(world) > 1
        if self.scratch:
            path = Path(tempfile.mkdtemp(prefix=f"pipeline-run-rank{rank}-"))
        elif cfg.out:
            path = Path(cfg.out)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{stage}-{stamp}"
            i = 1
            while path.exists():
                path = Path("runs") / f"{stage}-{stamp}-{i}"
                i += 1
        self.path = path
        if cache_root is not None and not self.scratch:
            # A run folder in the cache would remove the cache's own files on its next run.
            check_apart(self.path, cache_root)
        with disk_full_is_user_error(self.path):
            require_writable_folder(
                self.path, "the run folder", "set out= to a folder you can write (or run from one)"
            )
        # A folder that already holds a run.json is an earlier run's: its results go before this run
        # starts, so whatever this run ends with, nothing in the folder is mistaken for its result.
        self.replaced = _remove_earlier_results(self.path) if (self.path / "run.json").is_file() else []
        self.info: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "name": cfg.name,
            "seed": cfg.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "cache_dir": str(cache_root) if cache_root else None,
            "versions": versions(),
            "cache_keys": {},
        }
        write_text_atomic(self.path / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        self._save()

    def record_keys(self, keys: dict[str, str]) -> None:
        self.info["cache_keys"].update(keys)
        self._save()

    def record(self, **kw: Any) -> None:
        self.info.update(kw)
        self._save()

    def finish(self) -> None:
        self.info["status"] = "complete"
        self.info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._save()
        self._drop_scratch()

    def fail(self, message: str) -> None:
        """Mark the run failed; best effort, so the error that failed it is the one reported.

        If even that cannot be written (a full disk), run.json keeps saying "running": still never
        "complete".
        """
        self.info["status"] = "failed"
        self.info["error"] = message
        with contextlib.suppress(OSError, UserError):
            self._save()

    def _drop_scratch(self) -> None:
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)

    def _save(self) -> None:
        write_json_atomic(self.path / "run.json", self.info)


def is_run_record(path: Path) -> bool:
    """Whether ``path`` is a ``run.json`` this tool wrote (a mapping with its stage, status and versions)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(info, dict)
        and isinstance(info.get("stage"), str)
        and info.get("status") in ("running", "complete", "failed")
        and isinstance(info.get("versions"), dict)
    )


def _is_own_temp(name: str, own: set[str]) -> bool:
    """A temporary file of the tool's atomic writes (``.<name>.tmp-<pid>``) for one of ``own``'s names,
    left by a killed process."""
    if not name.startswith(".") or ".tmp-" not in name:
        return False
    base, _, pid = name[1:].rpartition(".tmp-")
    return pid.isdigit() and base in own


def own_and_foreign(folder: Path) -> tuple[list[Path], list[Path]]:
    """Split what ``folder`` holds into what this tool wrote there as a run folder and everything else.

    A folder without a run.json of this tool owns nothing (a user's ``config.yaml`` is theirs). With
    one, the tool's files are its run record (run.json, config.yaml), its results and checkpoints
    (core/outputs.py), the model files its run.json lists, the answer its metrics.json names,
    ``thumbs/``, leftovers of its atomic writes, and retrieval subfolders made only of such files.
    """
    if not folder.is_dir():
        return [], []
    entries = sorted(folder.iterdir())
    if not (folder / "run.json").is_file() or not is_run_record(folder / "run.json"):
        return [], entries
    names = set(run_folder_names()) | set(_earlier_model_files(folder))
    answer = _earlier_answer(folder)
    if answer is not None and answer.parent.resolve() == folder.resolve():
        names.add(answer.name)
    own: list[Path] = []
    foreign: list[Path] = []
    for p in entries:
        if p.is_symlink() or p.is_file():
            (own if p.name in names or _is_own_temp(p.name, names) else foreign).append(p)
        elif p.is_dir() and p.name in RESULT_DIRS:
            own.append(p)
        elif p.is_dir() and ((p / "metrics.json").is_file() or (p / "report.html").is_file()):
            sub_names = set(run_folder_names())
            sub_answer = _earlier_answer(p)
            if sub_answer is not None and sub_answer.parent.resolve() == p.resolve():
                sub_names.add(sub_answer.name)
            inner = sorted(p.iterdir())
            ok = all(
                (q.is_file() and (q.name in sub_names or _is_own_temp(q.name, sub_names)))
                or (q.is_dir() and not q.is_symlink() and q.name in RESULT_DIRS)
                for q in inner
            )
            (own if ok else foreign).append(p)
        else:
            foreign.append(p)
    return own, foreign


def clear_run_folder(folder: Path, *, what: str = "run folder") -> None:
    """Remove an earlier run's files from ``folder`` so nothing stale survives; the folder then is empty.

    Only the tool's own files (:func:`own_and_foreign`) are removed, and only when nothing else is
    there: a folder holding any file the tool did not write is left exactly as it is and refused in
    one line naming the first such file.
    """
    own, foreign = own_and_foreign(folder)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise UserError(
            f"{what} {folder} holds files the tool did not write ({foreign[0].name}{more}); "
            "move them away, then rerun"
        )
    for p in own:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
