"""DenseUAV (``denseuav``): University-1652-like ``<root>/<split>/<view>/<id>/<image>``
(``test/query_drone``, ``test/gallery_satellite``, ``train/drone``, ``train/satellite``) with
``Dense_GPS_ALL.txt`` at the root, whose positions ``retrieve.geo`` reads (extraction does not need it)."""

from __future__ import annotations

from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.datasets.layouts.folders import listing, read_id_folders
from cvgl.datasets.layouts.image_list import ImageList

ROOT_HINT = "<DenseUAV folder containing test/, train/ and Dense_GPS_ALL.txt>"


def read_denseuav(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """DenseUAV: ``<root>/<split>/<view>/<id>/<image>``, label = location ``<id>``."""
    del altitude, area
    layout = "<root>/<split>/<view>/<id>/<image> (DenseUAV)"
    view_dir = root / split / view
    if not view_dir.is_dir():
        where = root / split if (root / split).is_dir() else root
        raise UserError(
            f"view folder {view_dir} does not exist (found under {where}: {listing(where)}); expected {layout}"
        )
    return read_id_folders(root, view_dir, layout)
