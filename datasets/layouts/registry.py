"""Every dataset layout the pipeline accepts (``dataset.layout``), in one table: what kind each is, its
reader when it is read as image folders, and its natural retrieval direction; and
:func:`list_images`, which reads one view of an image layout through that table."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.datasets.layouts import cvact, cvusa, denseuav, folder, sues200, u1652, vigor
from cvgl.datasets.layouts.folders import check_simple_name, resolve_root
from cvgl.datasets.layouts.image_list import ImageList

# A layout's reader: (root, view, split, altitude, area) -> the view's image list. Each reader takes
# all five and ignores what does not apply to its dataset (only SUES-200 has altitudes, only VIGOR areas).
Reader = Callable[[Path, str, str, "int | None", str], ImageList]

# What a layout is, by kind:
#   images     image folders as the dataset ships them, read by a reader (list_images)
#   generated  a dataset generated on demand in University-1652's layout, then read as u1652
#   features   extracted features, not images: imported with `pipeline cache import`
#   map        GeoTIFF maps cut into gallery tiles plus positioned drone photos (datasets.map_layouts)
KINDS: tuple[str, ...] = ("images", "generated", "features", "map")

# dataset.mode when it is not set, for every layout whose entry names no other.
DEFAULT_MODE = "D2S"


@dataclass(frozen=True)
class Layout:
    """One layout the pipeline accepts.

    Attributes:
        name: the ``dataset.layout`` value.
        kind: one of :data:`KINDS`.
        reader: the image layouts' reader; None for every other kind.
        root_hint: what ``dataset.root`` holds, for the messages of an unusable root (image layouts).
        default_mode: the natural retrieval direction, ``dataset.mode`` when it is not set.
        pairs: ground/aerial image pairs (directions ``G2A`` / ``A2G``), as CVUSA and CVACT ship.
    """

    name: str
    kind: str
    reader: Reader | None = None
    root_hint: str = ""
    default_mode: str = DEFAULT_MODE
    pairs: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"layout {self.name}: kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if (self.reader is not None) != (self.kind == "images"):
            raise ValueError(f"layout {self.name}: image layouts, and only they, have a reader")


# In the order messages list them: the original two first.
REGISTRY: dict[str, Layout] = {
    entry.name: entry
    for entry in (
        Layout("u1652", "images", u1652.read_u1652, u1652.ROOT_HINT),
        Layout("folder", "images", folder.read_folder, folder.ROOT_HINT),
        Layout("synthetic", "generated"),
        Layout("sues200", "images", sues200.read_sues200, sues200.ROOT_HINT),
        Layout("cvusa", "images", cvusa.read_cvusa, cvusa.ROOT_HINT, default_mode="G2A", pairs=True),
        Layout("cvact", "images", cvact.read_cvact, cvact.ROOT_HINT, default_mode="G2A", pairs=True),
        Layout("geoalign_release", "features"),
        Layout("vigor", "images", vigor.read_vigor, vigor.ROOT_HINT, default_mode="G2S"),
        Layout("denseuav", "images", denseuav.read_denseuav, denseuav.ROOT_HINT),
        Layout("map", "map"),
        Layout("uav_visloc", "map"),
    )
}

# Every layout the pipeline accepts (the choices of dataset.layout).
LAYOUT_NAMES: tuple[str, ...] = tuple(REGISTRY)
# The image layouts, which list_images reads.
LAYOUTS: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.kind == "images")
PAIR_LAYOUTS: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.pairs)
MAP_LAYOUTS: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.kind == "map")


def default_mode(layout: str) -> str:
    """The layout's natural retrieval direction (vigor G2S, cvusa/cvact G2A, every other D2S)."""
    entry = REGISTRY.get(layout)
    return entry.default_mode if entry is not None else DEFAULT_MODE


def list_images(
    layout: str,
    root: str | os.PathLike[str],
    view: str,
    *,
    split: str = "test",
    altitude: int | None = None,
    area: str = "same",
) -> ImageList:
    """List the images of one view of a dataset.

    Args:
        layout: one of :data:`LAYOUTS` (each layout's module describes its files on disk).
        root: the dataset root (for ``u1652`` the folder holding ``train/`` and ``test/``).
        view: the view folder (``query_drone``, ``gallery_satellite``, ...); ``ground`` or ``aerial``
            for the pair layouts; for ``folder`` a tag only.
        split: ``test`` or ``train`` (``u1652``, ``sues200``); ``train`` or ``val`` (``cvusa``,
            ``cvact``; ``test`` means ``val``).
        altitude: SUES-200 flight height (150, 200, 250, 300); required there, ignored elsewhere.
        area: VIGOR's ``same`` or ``cross`` area split; ignored elsewhere.

    Returns:
        An :class:`ImageList`: sorted by (label folder, file name) for folder layouts, in split order
        for the pair layouts.

    Raises:
        UserError: unknown layout, missing root, view, split file or images, a non-integer building
            folder, or no images at all.
    """
    entry = REGISTRY.get(layout)
    if entry is None or entry.reader is None:
        raise UserError(f"unknown dataset.layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_simple_name("view", view)
    check_simple_name("split", split)
    root_path = resolve_root(root, entry.root_hint)
    return entry.reader(root_path, view, split, altitude, area)
