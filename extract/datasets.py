"""Image lists of the datasets the pipeline reads, in the layouts they ship in.

An :class:`ImageList` is the unit the rest of the pipeline works on: the cache keys an entry by the
list's relative paths (plus sizes and mtimes), the extractor decodes it in order, and retrieval uses its
labels to find the true matches. Names are therefore POSIX paths relative to the dataset root, sorted
deterministically, so the same folder gives the same list (and the same cache key) on every machine.

Each layout is one small reader function registered in :data:`_READERS`; adding SUES-200, CVUSA or
CVACT means writing one more reader, not touching the others.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from configs.errors import UserError

# Lower-case suffixes we decode; anything else in an image folder (thumbnails databases, READMEs,
# annotation files) is ignored rather than treated as an error.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

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

# Only digits (optionally -1 for junk): int() alone would also accept " 7", "+7" or "٣", which would
# make two differently named folders collide silently.
_INT_NAME = re.compile(r"-?[0-9]+")


@dataclass(frozen=True, eq=False)
class ImageList:
    """An ordered list of images with integer labels, for one view of one dataset.

    Attributes:
        root: the dataset root; every name is relative to it.
        names: POSIX paths relative to ``root``, in the deterministic order the pipeline uses.
        labels: int64 array, one label per name; -1 means junk / unknown (removed from rankings).
        view: the view this list holds (``query_drone``, ``gallery_satellite``, ...).
        label_names: for layouts whose label folders are not integers, ``label_names[k]`` is the
            folder name of label ``k``; empty when labels are the folder integers themselves.
    """

    root: Path
    names: tuple[str, ...]
    labels: np.ndarray
    view: str
    label_names: tuple[str, ...] = field(default=())

    # eq=False: the generated __eq__/__hash__ would compare/hash the numpy array and fail; identity
    # semantics are enough, and the cache compares lists by digest anyway.

    def __post_init__(self) -> None:
        labels = np.array(self.labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != len(self.names):
            raise ValueError(f"ImageList has {len(self.names)} names but {labels.shape[0]} labels")
        # Read-only so that the frozen dataclass is actually immutable (a shared list mutated by one
        # stage would silently change another stage's ground truth).
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "label_names", tuple(self.label_names))

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> Path:
        """Absolute (root-joined) path of image ``i``."""
        return self.root / self.names[i]


# --------------------------------------------------------------------------------------------------
# Helpers shared by the readers


def _check_simple_name(kind: str, value: str) -> None:
    """Reject view/split names that would escape the dataset root or name nested folders."""
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        raise UserError(f"{kind} {value!r} is not a plain folder name; use e.g. {kind}=query_drone")


def _resolve_root(root: str | os.PathLike[str], hint: str) -> Path:
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise UserError(f"dataset root {root_path} does not exist; set dataset.root={hint}")
    if not root_path.is_dir():
        raise UserError(f"dataset root {root_path} is not a folder; set dataset.root={hint}")
    return root_path


def _subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (hidden ones such as .git or .cache skipped)."""
    with os.scandir(folder) as it:
        return [e.name for e in it if not e.name.startswith(".") and e.is_dir()]


def _image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder``.

    Dot-files are skipped: macOS leaves ``._name.jpg`` resource forks next to real images when a
    dataset is copied from a Mac, and they would fail to decode.
    """
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            and e.is_file()
        ]
    return sorted(names)


def _int_label(name: str) -> int | None:
    """The integer a label folder names, or None when it is not an integer folder name."""
    if not _INT_NAME.fullmatch(name):
        return None
    return int(name)


def _listing(folder: Path) -> str:
    """Comma-separated visible sub-folders of ``folder`` for error messages."""
    try:
        found = sorted(_subdirs(folder))
    except OSError:
        return "(unreadable)"
    return ", ".join(found) if found else "(none)"


def _no_images(where: Path, layout_hint: str) -> UserError:
    exts = " ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    return UserError(f"no images ({exts}) found under {where}; expected the layout {layout_hint}")


# --------------------------------------------------------------------------------------------------
# Layout readers: (root, view, split) -> ImageList

Reader = Callable[[Path, str, str], ImageList]
_READERS: dict[str, Reader] = {}
_ROOT_HINTS: dict[str, str] = {}


def _register(name: str, root_hint: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _READERS[name] = fn
        _ROOT_HINTS[name] = root_hint
        return fn

    return deco


@_register("u1652", "<folder containing test/ and train/>")
def _read_u1652(root: Path, view: str, split: str) -> ImageList:
    """University-1652: ``<root>/<split>/<view>/<id>/<image>``, label = building number ``<id>``."""
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
                f"{_listing(root)}); expected {layout}"
            )
        raise UserError(
            f"view folder {view_dir} does not exist; views found under {split_dir}: "
            f"{_listing(split_dir)} (University-1652 {split} views: {known})"
        )

    buildings: list[tuple[int, str]] = []
    for name in _subdirs(view_dir):
        label = _int_label(name)
        if label is None or label < -1:
            raise UserError(
                f"folder {view_dir / name} is not a building number; University-1652 expects "
                f"{layout} with integer <id> folders: rename or remove it"
            )
        buildings.append((label, name))
    # (number, name): "0001" and "1" both mean building 1; the name keeps the order total.
    buildings.sort()

    names: list[str] = []
    labels: list[int] = []
    for label, bname in buildings:
        for fname in _image_files(view_dir / bname):
            names.append(f"{split}/{view}/{bname}/{fname}")
            labels.append(label)
    if not names:
        raise _no_images(view_dir, layout)
    return ImageList(root=root, names=tuple(names), labels=np.asarray(labels, np.int64), view=view)


@_register("folder", "<folder with one sub-folder of images per label>")
def _read_folder(root: Path, view: str, split: str) -> ImageList:
    """Generic ``<root>/<label>/<image>``.

    Label folders that are all integers give those integers as labels; otherwise each label is the
    index of its folder name in the sorted list of folder names, recorded in ``label_names``. ``split``
    does not apply to this layout and is ignored.
    """
    del split
    layout = "<root>/<label>/<image> (folder)"
    folders = _subdirs(root)
    ints = [_int_label(n) for n in folders]
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
        for fname in _image_files(root / folder):
            names.append(f"{folder}/{fname}")
            labels.append(label)
    if not names:
        loose = _image_files(root)
        extra = f" ({len(loose)} images lie directly in it: move them into label folders)" if loose else ""
        raise UserError(str(_no_images(root, layout)) + extra)
    return ImageList(
        root=root,
        names=tuple(names),
        labels=np.asarray(labels, np.int64),
        view=view,
        label_names=label_names,
    )


LAYOUTS: tuple[str, ...] = tuple(_READERS)


def list_images(layout: str, root: str | os.PathLike[str], view: str, *, split: str = "test") -> ImageList:
    """List the images of one view of a dataset.

    Args:
        layout: one of :data:`LAYOUTS` (``u1652``: University-1652; ``folder``: ``<root>/<label>/<img>``).
        root: the dataset root (for ``u1652`` the folder holding ``train/`` and ``test/``).
        view: the view folder (``query_drone``, ``gallery_satellite``, ...); for ``folder`` a tag only.
        split: ``test`` or ``train`` (``u1652`` only).

    Returns:
        An :class:`ImageList` sorted by (label folder, file name).

    Raises:
        UserError: unknown layout, missing root or view folder, a non-integer building folder, or no
            images at all.
    """
    reader = _READERS.get(layout)
    if reader is None:
        raise UserError(f"unknown dataset.layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    _check_simple_name("view", view)
    _check_simple_name("split", split)
    root_path = _resolve_root(root, _ROOT_HINTS[layout])
    return reader(root_path, view, split)


# --------------------------------------------------------------------------------------------------
# Retrieval directions

# Canonical directions and their aliases (compared case-insensitively). D = drone, S = satellite,
# G = ground/street, following the University-1652 paper's naming.
_DIRECTIONS: dict[str, tuple[str, str]] = {
    "D2S": ("query_drone", "gallery_satellite"),
    "S2D": ("query_satellite", "gallery_drone"),
    "G2S": ("query_street", "gallery_satellite"),
    "S2G": ("query_satellite", "gallery_street"),
    "D2G": ("query_drone", "gallery_street"),
    "G2D": ("query_street", "gallery_drone"),
}
_ALIASES: dict[str, str] = {
    "drone2sat": "D2S",
    "drone2satellite": "D2S",
    "sat2drone": "S2D",
    "satellite2drone": "S2D",
    "street2sat": "G2S",
    "street2satellite": "G2S",
    "ground2sat": "G2S",
    "sat2street": "S2G",
    "satellite2street": "S2G",
    "sat2ground": "S2G",
    "drone2street": "D2G",
    "street2drone": "G2D",
}


def view_pair(mode: str) -> tuple[str, str]:
    """(query view, gallery view) of a retrieval direction, e.g. ``D2S`` -> drone query, satellite gallery.

    Accepts ``D2S S2D G2S S2G D2G G2D`` (any case) and spelled-out aliases such as ``drone2sat`` or
    ``street2sat``.
    """
    key = mode.strip()
    canon = {k.lower(): k for k in _DIRECTIONS}
    canon.update({k.lower(): v for k, v in _ALIASES.items()})
    found = canon.get(key.lower())
    if found is None:
        raise UserError(
            f"unknown retrieval direction {mode!r}; choose one of {', '.join(_DIRECTIONS)} "
            f"(or {', '.join(_ALIASES)})"
        )
    return _DIRECTIONS[found]


def unify_label_names(lists: Iterable[ImageList]) -> list[ImageList]:
    """Re-number named labels so that several lists (query and gallery) share one vocabulary.

    With the ``folder`` layout and non-integer folder names, each list numbers its folders on its own,
    so the same place can get different numbers in the query and the gallery. This maps every list's
    labels onto the sorted union of the folder names. Lists with integer labels are returned unchanged;
    mixing the two kinds is an error because the numbers could not be compared.
    """
    items = list(lists)
    named = [bool(x.label_names) for x in items]
    if not any(named):
        return items
    if not all(named):
        raise UserError(
            "cannot compare labels of lists with integer label folders and lists with named label "
            "folders; name the label folders the same way in the query and the gallery"
        )
    vocab = sorted(set().union(*(x.label_names for x in items)))
    index = {n: k for k, n in enumerate(vocab)}
    out = []
    for x in items:
        remap = np.array([index[n] for n in x.label_names], dtype=np.int64)
        out.append(
            ImageList(
                root=x.root,
                names=x.names,
                labels=remap[x.labels],
                view=x.view,
                label_names=tuple(vocab),
            )
        )
    return out
