"""What the layout readers share: the dataset root's checks, walking image folders in a deterministic
order, reading ``<id>/<image>`` building folders, and the messages that list what a folder holds."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.core.path_errors import PATH_ERRNOS, show_path
from cvgl.datasets.layouts.image_list import ImageList

# Lower-case suffixes we decode; anything else in an image folder (thumbnails databases, READMEs,
# annotation files) is ignored rather than treated as an error.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Only digits (optionally -1 for junk): int() alone would also accept " 7", "+7" or "٣", which would
# make two differently named folders collide silently.
INT_NAME = re.compile(r"-?[0-9]+")


def check_simple_name(kind: str, value: str) -> None:
    """Reject view/split names that would escape the dataset root or name nested folders."""
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        raise UserError(f"{kind} {value!r} is not a plain folder name; use e.g. {kind}=query_drone")


def resolve_root(root: str | os.PathLike[str], hint: str) -> Path:
    """``root`` as a Path to an existing folder; else a UserError ending in ``set dataset.root=<hint>``."""
    root_path = Path(root).expanduser()
    try:
        st = root_path.stat()
    except FileNotFoundError:
        raise UserError(
            f"dataset root {show_path(root_path)} does not exist; set dataset.root={hint}"
        ) from None
    except OSError as e:
        # A name too long for the system, a loop of links, a file as a parent: the same fix.
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror
        raise UserError(
            f"dataset root {show_path(root_path)} cannot be used: {reason}; set dataset.root={hint}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"dataset root {show_path(root_path)} is not a folder; set dataset.root={hint}")
    return root_path


def subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (hidden ones such as .git or .cache skipped)."""
    with os.scandir(folder) as it:
        return [e.name for e in it if not e.name.startswith(".") and e.is_dir()]


def image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder``.

    Dot-files are skipped: macOS leaves ``._name.jpg`` resource forks next to real images when a
    dataset is copied from a Mac, and they would fail to decode. An image-named entry whose type
    cannot be read (a symlink loop: ELOOP) is kept, so that extraction reports it in one line as an
    unreadable image, or leaves it out under ``--skip-bad``, instead of dropping it silently.
    """
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and _is_file_or_unreadable(e)
        ]
    return sorted(names)


def _is_file_or_unreadable(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # ELOOP and the like: the loader names the file and the error
        return True


def int_label(name: str) -> int | None:
    """The integer a label folder names, or None when it is not an integer folder name."""
    if not INT_NAME.fullmatch(name):
        return None
    return int(name)


def listing(folder: Path) -> str:
    """Comma-separated visible sub-folders of ``folder`` for error messages."""
    try:
        found = sorted(subdirs(folder))
    except OSError:
        return "(unreadable)"
    return ", ".join(found) if found else "(none)"


def no_images(where: Path, layout_hint: str) -> UserError:
    exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    return UserError(f"no images ({exts}) found under {where}; expected the layout {layout_hint}")


def read_id_folders(root: Path, view_dir: Path, layout: str, loose_label: int = -1) -> ImageList:
    """``<view_dir>/<id>/<image>`` with integer ``<id>`` folders (labels), plus loose images.

    Loose images come after every building folder, labelled ``loose_label``: University-1652's
    extended satellite gallery ships its distractor tiles as one flat folder without building ids
    (:data:`~cvgl.datasets.layouts.image_list.DISTRACTOR` there; -1, unknown, elsewhere). A folder
    that holds no image is a UserError naming ``layout``.
    """
    buildings: list[tuple[int, str]] = []
    for name in subdirs(view_dir):
        label = int_label(name)
        if label is None or label < -1:
            raise UserError(
                f"folder {view_dir / name} is not a building number; {layout} expects integer <id> "
                "folders: rename or remove it"
            )
        buildings.append((label, name))
    # (number, name): "0001" and "1" both mean building 1; the name keeps the order total.
    buildings.sort()
    prefix = view_dir.relative_to(root).as_posix()
    names: list[str] = []
    labels: list[int] = []
    for label, bname in buildings:
        files = image_files(view_dir / bname)
        names.extend(f"{prefix}/{bname}/{f}" for f in files)
        labels.extend([label] * len(files))
    loose = image_files(view_dir)
    names.extend(f"{prefix}/{f}" for f in loose)
    labels.extend([loose_label] * len(loose))
    if not names:
        raise no_images(view_dir, layout)
    return ImageList(root=root, names=tuple(names), labels=np.asarray(labels, np.int64), view=view_dir.name)
