"""Which files of ``backbone.weights`` are weights: checked by name and type before any byte is read.

``backbone.weights`` is a checkpoint file (Meta's ``.pth``, a ``.safetensors``, torchvision-format VGG16
state dicts) or, for DINOv3, a Hugging Face folder: ``model.safetensors`` or a sharded
``model.safetensors.index.json`` with the shards its ``weight_map`` names, and optionally
``config.json``. :func:`weight_files` finds exactly the files the loaders read, checks each is a regular
file (a FIFO, a socket or a device would block or never end), and refuses in one line a folder that is
not such a folder without looking at anything else in it: ``backbone.weights=../..`` costs a few
``stat`` calls, not a walk of the tree. Only these files are hashed into the key
(:func:`weights_digest`); a folder holding exactly them keys as it always did.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from cvgl.core.errors import UserError
from cvgl.core.keys import DigestMemo, files_digest
from cvgl.core.path_errors import require_regular_file

HF_SINGLE = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_CONFIG = "config.json"
# A shard index names a few hundred shards at most; its size bounds what is parsed.
MAX_INDEX_BYTES = 64 << 20
_FIX = "set backbone.weights to a checkpoint file or a Hugging Face model folder"


def _shard_names(index: Path) -> list[str]:
    st = require_regular_file(index, "the shard index", _FIX)
    if st.st_size > MAX_INDEX_BYTES:
        raise UserError(f"the shard index {index} is {st.st_size} bytes, not a shard index; restore the file")
    try:
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise UserError(f"cannot read the shard index {index}: {err}; restore the file") from None
    for s in shards:
        pure = PurePosixPath(s) if isinstance(s, str) else None
        if pure is None or not s or pure.is_absolute() or ".." in pure.parts or "\\" in s:
            raise UserError(
                f"the shard index {index} names {s!r}, not a file inside its folder; restore the file"
            )
    return shards


def weight_files(path: Path, *, folder_allowed: bool = True) -> list[str]:
    """The files of ``backbone.weights`` that hold weights, relative to ``path`` ("" for a file itself).

    A file must be a regular file. A folder (``folder_allowed``: DINOv3 only) must be a Hugging Face
    model folder; its ``config.json`` is listed when present, then the weights. Anything else is a
    one-line :class:`UserError`.
    """
    try:
        is_dir = path.is_dir()
    except OSError as e:
        raise UserError(f"backbone weights {path} cannot be read ({e.strerror or e}); check the path") from None
    if not is_dir:
        require_regular_file(path, "backbone weights", _FIX)
        return [""]
    if not folder_allowed:
        raise UserError(
            f"backbone weights {path} is a folder; VGG16 weights are one file: set backbone.weights to the "
            ".pth/.pt/.safetensors file"
        )
    files: list[str] = []
    if (path / HF_CONFIG).exists():
        require_regular_file(path / HF_CONFIG, "the weights config", _FIX)
        files.append(HF_CONFIG)
    if (path / HF_SINGLE).exists():
        require_regular_file(path / HF_SINGLE, "backbone weights", _FIX)
        return files + [HF_SINGLE]
    if (path / HF_INDEX).exists():
        shards = _shard_names(path / HF_INDEX)
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise UserError(
                f"checkpoint shard {path / missing[0]} is missing ({len(missing)} of {len(shards)}); "
                "download the complete checkpoint folder"
            )
        for s in shards:
            require_regular_file(path / s, "checkpoint shard", _FIX)
        return sorted(files + [HF_INDEX, *shards])
    raise UserError(
        f"backbone weights {path} is a folder without weights: it has no {HF_SINGLE} or {HF_INDEX}; "
        "point backbone.weights at a Hugging Face DINOv3 folder or at a checkpoint file"
    )


def weights_digest(path: str | os.PathLike, memo: DigestMemo | None = None, *, folder_allowed: bool = True) -> str:
    """The key's digest of ``backbone.weights``: a file's sha256, or a folder's weight files' digests.

    Only :func:`weight_files` are hashed; the memo (``<cache>/digests.json``) is written once, after.
    """
    p = Path(path)
    files = weight_files(p, folder_allowed=folder_allowed)
    return files_digest(p, files, memo)
