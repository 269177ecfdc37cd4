"""SUES-200 (``sues200``): ``Testing/<altitude>/<view>/<id>/<image>`` (``Training/<altitude>/{drone,
satellite}`` for ``split=train``), the layout of the release after its own split script
(``Reza-Zhu/SUES-200-Benchmark``: ``script/split_datasets.py``); label = location ``<id>``. The test
galleries hold all 200 locations, the queries the 80 test ones; ``dataset.altitude`` picks 150, 200,
250 or 300."""

from __future__ import annotations

from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.datasets.layouts.folders import INT_NAME, listing, read_id_folders, subdirs
from cvgl.datasets.layouts.image_list import ImageList

ROOT_HINT = "<folder containing Testing/ and Training/>"

# SUES-200's split folders (its split script writes Training/ and Testing/) and altitudes.
_SUES_SPLITS = {"test": "Testing", "train": "Training"}
SUES200_ALTITUDES: tuple[int, ...] = (150, 200, 250, 300)


def read_sues200(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """SUES-200: ``<root>/<Testing|Training>/<altitude>/<view>/<id>/<image>``, label = location ``<id>``."""
    del area
    layout = "<root>/Testing/<altitude>/<view>/<id>/<image> (SUES-200)"
    folder = _SUES_SPLITS.get(split.lower(), split)
    split_dir = root / folder
    if not split_dir.is_dir():
        if root.name in ("Testing", "Training"):
            raise UserError(
                f"dataset.root {root} is a split folder; set dataset.root to the folder that contains "
                f"{folder}/, i.e. dataset.root={root.parent}"
            )
        raise UserError(
            f"no {folder}/ under {root} (found: {listing(root)}); expected {layout}: run SUES-200's "
            "split script on the raw release, or point dataset.root at its output"
        )
    heights = sorted(n for n in subdirs(split_dir) if INT_NAME.fullmatch(n))
    if altitude is None:
        raise UserError(
            f"dataset.altitude is not set for layout sues200; set dataset.altitude to one of "
            f"{', '.join(heights) or ', '.join(map(str, SUES200_ALTITUDES))}"
        )
    alt_dir = split_dir / str(int(altitude))
    if not alt_dir.is_dir():
        raise UserError(
            f"altitude folder {alt_dir} does not exist; set dataset.altitude to one of "
            f"{', '.join(heights) or '(none found)'}"
        )
    view_dir = alt_dir / view
    if not view_dir.is_dir():
        raise UserError(
            f"view folder {view_dir} does not exist; views found under {alt_dir}: {listing(alt_dir)}"
        )
    return read_id_folders(root, view_dir, layout)
