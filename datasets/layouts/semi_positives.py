"""VIGOR ground lists' semi-positives stored beside an entry's shards (``semi_positives.h5``) and read
back in the entry's row order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError
from cvgl.datasets.layouts.image_list import ImageList

SEMI_POSITIVES_FILE = "semi_positives.h5"


def write_semi_positives(images: ImageList, entry_dir: Path) -> dict:
    """Store a VIGOR ground list's semi-positives beside the entry's shards; returns manifest fields.

    ``<entry>/semi_positives.h5`` (plain h5py): ``names [n]`` utf-8, the image names in list order, and
    ``semi_positives [n, 3]`` int64, the gallery labels of each image's semi-positives (the same
    numbering as the satellite entry's ``labels``). Rows are matched to the entry by name, so an image
    left out by ``--skip-bad`` does not shift them. Written to a temporary name, fsynced and renamed
    before the manifest, which records its sha256: an entry is complete only with it. ``{}`` and
    nothing written for lists without semi-positives.
    """
    if images.semi_positives is None:
        return {}
    import h5py

    path = Path(entry_dir) / SEMI_POSITIVES_FILE
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("semi_positives", data=np.asarray(images.semi_positives, dtype=np.int64))
            f.create_dataset(
                "names", data=np.array(images.names, dtype=object), dtype=h5py.string_dtype("utf-8")
            )
        sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return {"semi_positives": {"file": SEMI_POSITIVES_FILE, "sha256": sha, "columns": 3}}


def read_semi_positives(entry_dir: Path, info: dict, names: list[str]) -> np.ndarray:
    """The semi-positives of an entry's rows (``names``, in row order) from its ``semi_positives.h5``.

    ``info`` is the manifest's ``extra["semi_positives"]``. Raises UserError when the file is missing,
    altered, or lacks one of the names.
    """
    import h5py

    path = Path(entry_dir) / str(info.get("file", SEMI_POSITIVES_FILE))
    fix = "run `pipeline cache rm` on that entry and extract it again"
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.get("sha256"):
            raise OSError("checksum mismatch")
        with h5py.File(path, "r") as f:
            semi = np.asarray(f["semi_positives"][...], dtype=np.int64)
            stored = [s.decode() if isinstance(s, bytes) else str(s) for s in f["names"][...]]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"semi-positives file {path} is unreadable or corrupt ({e}); {fix}") from None
    row = {n: i for i, n in enumerate(stored)}
    idx = [row.get(n, -1) for n in names]
    if -1 in idx or semi.ndim != 2 or semi.shape[0] != len(stored):
        raise UserError(f"semi-positives file {path} does not cover the entry's images; {fix}")
    return semi[np.asarray(idx, dtype=np.int64)]
