"""University-1652 (``u1652``): ``<root>/<split>/<view>/<id>/<image>``, label = the 4-digit building
number. Images lying directly in a gallery view folder, as the extended "160k" satellite gallery's
distractor tiles ship, get label :data:`~cvgl.datasets.layouts.image_list.DISTRACTOR` (-2: never a true
match, but ranked and counted like any other gallery item; -1 would make them junk, removed from every
ranking, and the 160k gallery would score like the small one); loose images in a query view are
unknown (-1)."""

from __future__ import annotations

from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.datasets.layouts.folders import listing, read_id_folders
from cvgl.datasets.layouts.image_list import DISTRACTOR, ImageList

ROOT_HINT = "<folder containing test/ and train/>"

# University-1652's view folders per split. Other folders that exist on disk (for example an extended
# satellite gallery a user adds) are read too, since they follow the same <id>/<image> structure.
U1652_VIEWS: dict[str, tuple[str, ...]] = {
    "train": ("drone", "satellite", "street", "google"),
    "test": (
        "query_drone",
        "gallery_drone",
        "query_satellite",
        "gallery_satellite",
        "query_street",
        "gallery_street",
    ),
}


def read_u1652(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """University-1652: ``<root>/<split>/<view>/<id>/<image>``, label = building number ``<id>``."""
    del altitude, area
    layout = "<root>/<split>/<view>/<id>/<image> (University-1652)"
    split_dir = root / split
    view_dir = split_dir / view
    if not view_dir.is_dir():
        known = ", ".join(U1652_VIEWS.get(split, ()))
        if not split_dir.is_dir():
            if (root / view).is_dir():
                # The commonest mistake: pointing dataset.root at test/ itself.
                raise UserError(
                    f"view folder {view_dir} does not exist but {root / view} does; set dataset.root "
                    f"to the folder that contains {split}/, i.e. dataset.root={root.parent}"
                )
            raise UserError(
                f"view folder {view_dir} does not exist (no {split}/ under {root}; found: "
                f"{listing(root)}); expected {layout}"
            )
        raise UserError(
            f"view folder {view_dir} does not exist; views found under {split_dir}: "
            f"{listing(split_dir)} (University-1652 {split} views: {known})"
        )
    loose = DISTRACTOR if view.startswith("gallery") else -1
    return read_id_folders(root, view_dir, layout, loose)
