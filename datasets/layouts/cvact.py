"""CVACT (``cvact``): ``ACT_data.mat`` (``panoIds``, ``trainSet.trainInd``, ``valSet.valInd``, 1-based),
ground ``streetview/<id>_grdView.jpg``, aerial ``satview_polish/<id>_satView_polish.jpg``; label = the
pair's position in the split, so query i's true match is gallery i (the CVFT protocol)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.datasets.layouts.image_list import ImageList
from cvgl.datasets.layouts.pairs import check_pair_view, pair_list

ROOT_HINT = "<folder containing ACT_data.mat, streetview/ and satview_polish/>"


def _mat_strings(value: np.ndarray) -> list[str]:
    """Strings of a MATLAB char matrix (rows, space-padded) or cell array, as scipy.io.loadmat gives them."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    out = []
    for cell in arr.reshape(-1):
        c = np.asarray(cell)
        out.append(str(c.reshape(-1)[0]).strip() if c.size else "")
    return out


def _mat_indices(mat: dict, struct: str, field_name: str, n: int, path: Path) -> np.ndarray:
    """0-based indices from a MATLAB struct field of 1-based indices (``trainSet.trainInd``)."""
    try:
        node = mat[struct]
        value = node[field_name] if isinstance(node, dict) else node[field_name].reshape(-1)[0]
        idx = np.asarray(value, dtype=np.float64).reshape(-1)
    except (KeyError, ValueError, IndexError, TypeError):
        raise UserError(
            f"{path} has no {struct}.{field_name}; it is not CVACT's ACT_data.mat (restore the file)"
        ) from None
    if idx.size and (not np.all(idx == np.round(idx)) or idx.min() < 1 or idx.max() > n):
        raise UserError(f"{path}: {struct}.{field_name} holds indices outside 1..{n}; restore the file")
    return idx.astype(np.int64) - 1


def read_cvact(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """CVACT: ``ACT_data.mat`` pairs of one split (``train``; ``val`` = CVACT_val, also ``test``).

    ``ACT_data.mat`` is looked for in ``root`` and its parent (releases put it beside
    ``ANU_data_small/``); images under ``root`` or ``root/ANU_data_small``.
    """
    del altitude, area
    check_pair_view("cvact", view)
    fields = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd"), "test": ("valSet", "valInd")}
    if split.lower() not in fields:
        raise UserError(f"dataset.split={split!r} does not exist for cvact; use train or val")
    mat_path = next((p for p in (root / "ACT_data.mat", root.parent / "ACT_data.mat") if p.is_file()), None)
    if mat_path is None:
        raise UserError(
            f"ACT_data.mat not found in {root} or its parent; set dataset.root to the CVACT folder "
            "that holds it (with streetview/ and satview_polish/)"
        )
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError… for damaged files
        raise UserError(f"cannot read {mat_path} ({type(exc).__name__}); restore the file") from None
    if "panoIds" not in mat:
        raise UserError(f"{mat_path} has no panoIds; it is not CVACT's ACT_data.mat (restore the file)")
    pano = _mat_strings(mat["panoIds"])
    idx = _mat_indices(mat, *fields[split.lower()], len(pano), mat_path)
    base = (
        "" if (root / "streetview").is_dir() or not (root / "ANU_data_small").is_dir() else "ANU_data_small/"
    )
    if view == "ground":
        names = [f"{base}streetview/{pano[i]}_grdView.jpg" for i in idx]
    else:
        names = [f"{base}satview_polish/{pano[i]}_satView_polish.jpg" for i in idx]
    return pair_list(root, view, names, f"{mat_path} ({split})")
