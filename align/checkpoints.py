"""Alignment checkpoints: safetensors weights + a JSON config beside them (no pickle, no code)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import torch
from cvgl.core.atomic import atomic_path, write_bytes_atomic
from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.outputs import MODEL_INDEX as _MODEL_INDEX
from safetensors.torch import save

#: Written last in ``<cache>/models/<run digest>/``: the trained model's files (checkpoints, history).
MODEL_INDEX = _MODEL_INDEX
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def save_checkpoint(folder: Path, name: str, model: torch.nn.Module, config: dict) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` atomically; returns the weights path.

    Both are serialized in memory and written with a plain write, so a full disk is one line and
    leaves no partial file.
    """
    with disk_full_is_user_error(folder):
        folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    # safetensors refuses shared storage; clone so tied modules (e.g. dec1/dec2) save as plain tensors.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_bytes_atomic(weights, save(state, metadata={"format": "pt"}))
    write_bytes_atomic(folder / f"{name}.json", json.dumps(config, indent=2, sort_keys=True).encode())
    return weights


def torch_save_atomic(obj: object, path: Path) -> None:
    """``torch.save`` through memory and an atomic write (a full disk is one line, nothing partial)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with disk_full_is_user_error(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getbuffer())


def record_model_files(model_dir: Path, files: list[str]) -> None:
    """List a trained model's files in ``model_dir/MODEL_INDEX``, written last: the model is complete."""
    write_bytes_atomic(model_dir / MODEL_INDEX, json.dumps({"files": sorted(files)}, indent=2).encode())


def model_files(model_dir: Path) -> list[str]:
    """The files of the complete model in ``model_dir`` (empty when there is none, or it is not ours).

    Names are checked to be plain file names inside ``model_dir``: no path is built from unchecked text.
    """
    try:
        listed = json.loads((model_dir / MODEL_INDEX).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(listed, list):
        return []
    ok = [
        f
        for f in listed
        if isinstance(f, str) and _FILE_NAME.fullmatch(f) and (model_dir / f).is_file()
    ]
    return ok if len(ok) == len(listed) else []


def link_into(model_dir: Path, files: list[str], dest: Path) -> list[Path]:
    """Put the model's ``files`` into the run folder ``dest``: hard links, or copies across devices.

    The cache holds the model; the run folder gets a view of it, replacing any file of the same name.
    """
    out = []
    for f in files:
        src, dst = model_dir / f, dest / f
        with atomic_path(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        out.append(dst)
    return out
