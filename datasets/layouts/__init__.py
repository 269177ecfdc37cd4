"""The dataset layouts the pipeline reads: one module per image layout (its files on disk and its
reader), the registry of every layout ``dataset.layout`` accepts, the retrieval directions, and the
:class:`ImageList` every stage works on. Importers use the names re-exported here."""

from __future__ import annotations

from cvgl.datasets.layouts.directions import view_pair
from cvgl.datasets.layouts.folders import IMAGE_EXTENSIONS
from cvgl.datasets.layouts.image_list import (
    DISTRACTOR,
    ImageList,
    display_name,
    name_problem,
    unify_label_names,
)
from cvgl.datasets.layouts.pairs import PAIR_VIEWS
from cvgl.datasets.layouts.registry import (
    KINDS,
    LAYOUT_NAMES,
    LAYOUTS,
    MAP_LAYOUTS,
    PAIR_LAYOUTS,
    REGISTRY,
    Layout,
    Reader,
    default_mode,
    list_images,
)
from cvgl.datasets.layouts.semi_positives import (
    SEMI_POSITIVES_FILE,
    read_semi_positives,
    write_semi_positives,
)
from cvgl.datasets.layouts.sues200 import SUES200_ALTITUDES
from cvgl.datasets.layouts.u1652 import U1652_VIEWS
from cvgl.datasets.layouts.vigor import VIGOR_AREAS, VIGOR_CITIES, VIGOR_VIEWS, vigor_cities

__all__ = [
    "DISTRACTOR",
    "IMAGE_EXTENSIONS",
    "KINDS",
    "LAYOUTS",
    "LAYOUT_NAMES",
    "MAP_LAYOUTS",
    "PAIR_LAYOUTS",
    "PAIR_VIEWS",
    "REGISTRY",
    "SEMI_POSITIVES_FILE",
    "SUES200_ALTITUDES",
    "U1652_VIEWS",
    "VIGOR_AREAS",
    "VIGOR_CITIES",
    "VIGOR_VIEWS",
    "ImageList",
    "Layout",
    "Reader",
    "default_mode",
    "display_name",
    "list_images",
    "name_problem",
    "read_semi_positives",
    "unify_label_names",
    "view_pair",
    "vigor_cities",
    "write_semi_positives",
]
