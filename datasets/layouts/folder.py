"""The generic ``folder`` layout: ``<root>/<label>/<image>``, one sub-folder of images per label, with
integer folder names as labels or, when the names are not all integers, their sorted positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.datasets.layouts.folders import image_files, int_label, no_images, subdirs
from cvgl.datasets.layouts.image_list import ImageList

ROOT_HINT = "<folder with one sub-folder of images per label>"


def read_folder(root: Path, view: str, split: str, altitude: int | None, area: str) -> ImageList:
    """Generic ``<root>/<label>/<image>``.

    Label folders that are all integers give those integers as labels; otherwise each label is the
    index of its folder name in the sorted list of folder names, recorded in ``label_names``. ``split``
    does not apply to this layout and is ignored.
    """
    del split, altitude, area
    layout = "<root>/<label>/<image> (folder)"
    folders = subdirs(root)
    ints = [int_label(n) for n in folders]
    numeric = bool(folders) and all(v is not None and v >= -1 for v in ints)

    if numeric:
        order = sorted(zip(ints, folders, strict=True))  # type: ignore[arg-type]
        keyed: list[tuple[int, str]] = [(int(v), n) for v, n in order]
        label_names: tuple[str, ...] = ()
    else:
        sorted_names = sorted(folders)
        keyed = list(enumerate(sorted_names))
        label_names = tuple(sorted_names)

    names: list[str] = []
    labels: list[int] = []
    for label, folder in keyed:
        for fname in image_files(root / folder):
            names.append(f"{folder}/{fname}")
            labels.append(label)
    if not names:
        loose = image_files(root)
        extra = f" ({len(loose)} images lie directly in it: move them into label folders)" if loose else ""
        raise UserError(str(no_images(root, layout)) + extra)
    return ImageList(
        root=root,
        names=tuple(names),
        labels=np.asarray(labels, np.int64),
        view=view,
        label_names=label_names,
    )
