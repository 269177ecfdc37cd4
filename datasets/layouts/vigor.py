"""VIGOR (``vigor``): ``splits/<City>/satellite_list.txt`` and 13-column label files,
``satellite/<City>/…`` and ``ground/<City>/…``, read as the views ``ground`` and ``satellite`` of the
same-area or cross-area split (``dataset.area``); ground lists carry their semi-positives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.core.path_errors import read_text_file
from cvgl.datasets.layouts.folders import listing
from cvgl.datasets.layouts.image_list import ImageList

ROOT_HINT = "<VIGOR folder containing splits/, satellite/ and ground/>"

# VIGOR (Zhu et al., CVPR'21) as Sample4Geo reads it (sample4geo/dataset/vigor.py): the cities of each
# area and split, and the 13 columns of a label row (ground name, then four satellites each followed by
# two pixel offsets: the positive, then the three semi-positives).
VIGOR_CITIES: tuple[str, ...] = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
VIGOR_AREAS: tuple[str, ...] = ("same", "cross")
VIGOR_VIEWS: tuple[str, str] = ("ground", "satellite")
_VIGOR_CROSS = {"train": ("NewYork", "Seattle"), "test": ("Chicago", "SanFrancisco")}
_VIGOR_COLUMNS = 13
_VIGOR_SAT_COLUMNS = (1, 4, 7, 10)  # positive, semi-positive 1, 2, 3


def vigor_cities(area: str, split: str) -> tuple[str, ...]:
    """The cities of a VIGOR split: all four for ``same``; ``cross`` trains on NewYork + Seattle and
    tests on Chicago + SanFrancisco."""
    if area not in VIGOR_AREAS:
        raise UserError(f"dataset.area={area!r} is not a VIGOR area; set dataset.area=same or cross")
    if split not in _VIGOR_CROSS:
        raise UserError(f"dataset.split={split!r} does not exist for vigor; use train or test")
    return VIGOR_CITIES if area == "same" else _VIGOR_CROSS[split]


def _vigor_file(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise UserError(
            f"VIGOR split file {path} does not exist; set dataset.root to the VIGOR folder holding "
            f"splits/, satellite/ and ground/ (found under {root}: {listing(root)})"
        )
    return path


def _read_vigor_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, 13 columns) of every non-empty row of a VIGOR label file."""
    rows = []
    for lineno, line in enumerate(
        read_text_file(path, "VIGOR split file", "restore the file").splitlines(), start=1
    ):
        cols = line.split()
        if not cols:
            continue
        if len(cols) != _VIGOR_COLUMNS:
            raise UserError(
                f"{path} line {lineno} has {len(cols)} columns, VIGOR label rows have {_VIGOR_COLUMNS} (ground "
                "name, positive satellite + 2 offsets, 3 semi-positive satellites + 2 offsets each); restore the file"
            )
        rows.append((lineno, cols))
    return rows


def read_vigor(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """VIGOR: ``ground/<City>/<name>`` queries, ``satellite/<City>/<name>`` gallery.

    A satellite's label is its index in the split cities' ``satellite_list.txt`` files read in city
    order, as in Sample4Geo (so train and test galleries number the same tile alike). The test gallery
    is every listed satellite; the train gallery the satellites that are some query's positive, in the
    order they first appear. A ground image's label is its positive's; its three semi-positives are
    kept in :attr:`ImageList.semi_positives`.
    """
    del altitude
    if view not in VIGOR_VIEWS:
        raise UserError(
            f"view {view!r} does not exist in layout vigor; its views are ground and satellite "
            "(set dataset.mode=G2S, or dataset.views=[ground, satellite])"
        )
    cities = vigor_cities(area, split)
    sat_names: list[str] = []  # satellite/<City>/<file>
    sat_index: dict[str, int] = {}  # file name -> label (Sample4Geo keys by the bare file name too)
    for city in cities:
        listing = _vigor_file(root, f"splits/{city}/satellite_list.txt")
        for line in read_text_file(listing, "VIGOR split file", "restore the file").splitlines():
            cols = line.split()
            if cols:
                sat_index.setdefault(cols[0], len(sat_names))
                sat_names.append(f"satellite/{city}/{cols[0]}")
    label_file = f"same_area_balanced_{split}.txt" if area == "same" else "pano_label_balanced.txt"
    ground: list[str] = []
    sats: list[list[int]] = []
    for city in cities:
        path = _vigor_file(root, f"splits/{city}/{label_file}")
        for lineno, cols in _read_vigor_rows(path):
            row = []
            for c in _VIGOR_SAT_COLUMNS:
                label = sat_index.get(cols[c])
                if label is None:
                    raise UserError(
                        f"{path} line {lineno} names satellite {cols[c]!r}, which no satellite_list.txt of "
                        f"{', '.join(cities)} lists; restore the split files from the VIGOR release"
                    )
                row.append(label)
            ground.append(f"ground/{city}/{cols[0]}")
            sats.append(row)
    if not ground:
        raise UserError(
            f"the VIGOR {label_file} files of {', '.join(cities)} list no ground images; restore them"
        )
    table = np.asarray(sats, dtype=np.int64).reshape(-1, 4)
    # Every satellite a split row names must be on disk, whichever view is read: a missing positive
    # or semi-positive would silently change what the metrics mean.
    referenced = np.unique(table)
    gallery = np.arange(len(sat_names)) if split == "test" else _first_seen(table[:, 0])
    needed = np.union1d(referenced, gallery)
    missing = [sat_names[i] for i in needed if not (root / sat_names[i]).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} VIGOR satellite images named in the split are missing on disk, e.g. "
            f"{root / missing[0]}; restore them or point dataset.root at the complete copy"
        )
    if view == "ground":
        lost = [n for n in ground if not (root / n).is_file()]
        if lost:
            raise UserError(
                f"{len(lost)} of {len(ground)} VIGOR ground images listed in {label_file} are missing, e.g. "
                f"{root / lost[0]}; restore them or point dataset.root at the complete copy"
            )
        labels, semi, names = table[:, 0], table[:, 1:], tuple(ground)
    else:
        labels, semi, names = gallery.astype(np.int64), None, tuple(sat_names[i] for i in gallery)
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    if semi is not None:
        semi = np.ascontiguousarray(semi, dtype=np.int64)
        semi.setflags(write=False)
        digest.update(semi.astype("<i8").tobytes())
    return ImageList(
        root=root,
        names=names,
        labels=labels,
        view=view,
        semi_positives=semi,
        key_fields={"vigor_labels": digest.hexdigest()},
    )


def _first_seen(values: np.ndarray) -> np.ndarray:
    """The distinct values in the order they first appear (pandas' ``unique``)."""
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]
