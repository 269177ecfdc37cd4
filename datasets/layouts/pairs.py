"""What the pair layouts (CVUSA, CVACT) share: one list of (ground, aerial) image pairs per split, read
as two views whose label is the pair's index, so query i's true match is gallery i."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.datasets.layouts.image_list import ImageList

# The two views of a pair layout: the members of each pair.
PAIR_VIEWS: tuple[str, str] = ("ground", "aerial")


def check_pair_view(layout: str, view: str) -> None:
    if view not in PAIR_VIEWS:
        raise UserError(
            f"view {view!r} does not exist in layout {layout}; its views are ground and aerial "
            "(set dataset.mode=G2A or A2G, or dataset.views=[ground, aerial])"
        )


def pair_list(root: Path, view: str, names: list[str], where: str) -> ImageList:
    """An ImageList of pair members in split order, label = pair index; every file must exist."""
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(names)} {view} images listed in {where} are missing, e.g. "
            f"{root / missing[0]}; restore them or point dataset.root at the complete copy"
        )
    if not names:
        raise UserError(f"{where} lists no image pairs; restore the file from the dataset release")
    return ImageList(root=root, names=tuple(names), labels=np.arange(len(names), dtype=np.int64), view=view)
