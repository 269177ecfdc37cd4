"""CVUSA (``cvusa``): ``splits/{train,val}-19zl.csv``, each line
``bingmap/19/<x>.jpg,streetview/panos/<x>.jpg,annotations/<x>.png``; the views ``ground`` (column 2)
and ``aerial`` (column 1) list the same pairs in CSV order, label = pair index."""

from __future__ import annotations

from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.core.path_errors import read_text_file
from cvgl.datasets.layouts.folders import listing
from cvgl.datasets.layouts.image_list import ImageList
from cvgl.datasets.layouts.pairs import check_pair_view, pair_list

ROOT_HINT = "<folder containing splits/, bingmap/ and streetview/>"

_CVUSA_SPLITS = {
    "train": "splits/train-19zl.csv",
    "val": "splits/val-19zl.csv",
    "test": "splits/val-19zl.csv",
}


def _posix_rel(name: str) -> str:
    """A CSV path as a clean POSIX path relative to the root (Windows separators, ./ prefix)."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_cvusa(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """CVUSA: the pairs of ``splits/<split>-19zl.csv``; ``aerial`` = column 1, ``ground`` = column 2.

    ``split``: ``train`` or ``val``; ``test`` means ``val`` (the set CVUSA results are reported on).
    """
    del altitude, area
    check_pair_view("cvusa", view)
    rel = _CVUSA_SPLITS.get(split.lower())
    if rel is None:
        raise UserError(f"dataset.split={split!r} does not exist for cvusa; use train or val")
    csv = root / rel
    if not csv.is_file():
        raise UserError(
            f"CVUSA split file {csv} does not exist; set dataset.root to the folder that contains "
            f"splits/ (found: {listing(root)})"
        )
    column = 1 if view == "ground" else 0
    names: list[str] = []
    for lineno, line in enumerate(
        read_text_file(csv, "CVUSA split file", "restore the file").splitlines(), start=1
    ):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) < 2:
            raise UserError(
                f"{csv} line {lineno} is not 'bingmap/19/<x>.jpg,streetview/panos/<x>.jpg,…'; restore the file"
            )
        names.append(_posix_rel(parts[column]))
    return pair_list(root, view, names, str(csv))
