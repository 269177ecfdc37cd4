"""Image lists of the datasets the pipeline reads, in the layouts they ship in.

An :class:`ImageList` is the unit the rest of the pipeline works on: the cache keys an entry by the
list's relative paths (plus sizes and mtimes), the extractor decodes it in order, and retrieval uses its
labels to find the true matches. Names are therefore POSIX paths relative to the dataset root, sorted
deterministically, so the same folder gives the same list (and the same cache key) on every machine.

Each layout is one small reader function registered in :data:`_READERS`. The layouts, as the
datasets ship (names are relative to ``dataset.root``):

* ``u1652``: ``<split>/<view>/<id>/<image>``; label = the 4-digit building number. Images lying
  directly in a gallery view folder (no building folder), as the extended "160k" satellite
  gallery's distractor tiles ship, are read with label :data:`DISTRACTOR` (-2): never a true match,
  but ranked and counted like any other gallery item (label -1 would make them junk, removed from
  every ranking, and the 160k gallery would score like the small one). Loose images in a query
  view are unknown (-1).
* ``sues200``: ``Testing/<altitude>/<view>/<id>/<image>`` (``Training/<altitude>/{drone,satellite}``
  for ``split=train``), the layout of the SUES-200 release after its own split script
  (``Reza-Zhu/SUES-200-Benchmark``: ``script/split_datasets.py``); the test galleries hold all 200
  locations, the queries the 80 test ones. ``dataset.altitude`` picks 150, 200, 250 or 300.
* ``cvusa``: ``splits/{train,val}-19zl.csv``, each line
  ``bingmap/19/<x>.jpg,streetview/panos/<x>.jpg,annotations/<x>.png``; views ``ground`` (column 2)
  and ``aerial`` (column 1) list the same pairs in CSV order, label = pair index.
* ``cvact``: ``ACT_data.mat`` (``panoIds``, ``trainSet.trainInd``, ``valSet.valInd``, 1-based), ground
  ``streetview/<id>_grdView.jpg``, aerial ``satview_polish/<id>_satView_polish.jpg``; label = the
  pair's position in the split, so query i's true match is gallery i (the CVFT protocol).
* ``folder``: ``<label>/<image>``.
* ``vigor``: ``splits/<City>/satellite_list.txt`` and 13-column label files, ``satellite/<City>/…``,
  ``ground/<City>/…``; views ``ground`` and ``satellite``, ``dataset.area`` same | cross (see
  :func:`_read_vigor`). Ground lists carry their semi-positives.
* ``denseuav``: University-1652-like ``<split>/<view>/<id>/<image>`` with ``Dense_GPS_ALL.txt`` at the root.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError
from cvgl.core.path_errors import PATH_ERRNOS, read_text_file, show_path
from cvgl.datasets.maps import TileSource
from cvgl.datasets.positions import Positions

# Lower-case suffixes we decode; anything else in an image folder (thumbnails databases, READMEs,
# annotation files) is ignored rather than treated as an error.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# Label of a gallery item that is known not to match any query (University-1652's flat 160k
# distractor tiles): a negative in every ranking. -1 stays "junk / unknown", removed from rankings.
DISTRACTOR = -2

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
        labels: int64 array, one label per name; -1 means junk / unknown (removed from rankings),
            :data:`DISTRACTOR` (-2) a gallery item that matches no query (ranked as a negative).
        view: the view this list holds (``query_drone``, ``gallery_satellite``, ...).
        label_names: for layouts whose label folders are not integers, ``label_names[k]`` is the
            folder name of label ``k``; empty when labels are the folder integers themselves.
    """

    root: Path
    names: tuple[str, ...]
    labels: np.ndarray
    view: str
    label_names: tuple[str, ...] = field(default=())
    # VIGOR ground views: per image, the gallery labels of its three semi-positive satellites
    # (int64 [n, 3]); None for every other list. Stored beside the entry's shards (see
    # write_semi_positives), never in the shards themselves, so the shard format is unchanged.
    semi_positives: np.ndarray | None = field(default=None)
    # Extra fields for the entry's key, for lists whose labels are not determined by their names
    # (VIGOR labels come from the split files); empty for every other layout, so their keys stay.
    key_fields: dict = field(default_factory=dict)
    # Map layouts (map, uav_visloc): per row, the tile's centre and footprint or the frame's position
    # (cvgl.datasets.positions); stored beside the entry as positions.h5. None for every other layout.
    positions: Positions | None = field(default=None)
    # Map galleries: the tiles are windows of GeoTIFFs, read by this source (names are not files).
    tiles: TileSource | None = field(default=None)

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
    try:
        st = root_path.stat()
    except FileNotFoundError:
        raise UserError(f"dataset root {show_path(root_path)} does not exist; set dataset.root={hint}") from None
    except OSError as e:
        # A name too long for the system, a loop of links, a file as a parent: the same fix.
        reason = PATH_ERRNOS.get(e.errno or 0) or e.strerror
        raise UserError(f"dataset root {show_path(root_path)} cannot be used: {reason}; set dataset.root={hint}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"dataset root {show_path(root_path)} is not a folder; set dataset.root={hint}")
    return root_path


def _subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (hidden ones such as .git or .cache skipped)."""
    with os.scandir(folder) as it:
        return [e.name for e in it if not e.name.startswith(".") and e.is_dir()]


def _image_files(folder: Path) -> list[str]:
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


def name_problem(name: str) -> str | None:
    """Why an image name cannot be stored as a name (HDF5 UTF-8, one line of ``names.txt``), or None.

    A line break inside a name would split it in two in every line-oriented listing (``cache export
    --format npy``), and a file name that is not valid UTF-8 (Python keeps its undecodable bytes as
    lone surrogates) cannot be stored as text at all; either would come back as a different name.
    """
    if "\n" in name or "\r" in name:
        return "holds a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def display_name(name: str) -> str:
    """``name`` printable on one line whatever it holds: line breaks and undecodable bytes escaped."""
    if name_problem(name) is None:
        return name
    try:  # the file name's own bytes, undecodable ones as \xNN
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name's bytes
        return repr(name)[1:-1]
    return shown.replace("\n", "\\n").replace("\r", "\\r")


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
# Layout readers: (root, view, split, altitude) -> ImageList

Reader = Callable[[Path, str, str, "int | None"], ImageList]
_READERS: dict[str, Reader] = {}
_ROOT_HINTS: dict[str, str] = {}


def _register(name: str, root_hint: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _READERS[name] = fn
        _ROOT_HINTS[name] = root_hint
        return fn

    return deco


def _read_id_folders(root: Path, view_dir: Path, layout: str, loose_label: int = -1) -> ImageList | None:
    """``<view_dir>/<id>/<image>`` with integer ``<id>`` folders (labels), plus loose images.

    Loose images come after every building folder, labelled ``loose_label``: University-1652's
    extended satellite gallery ships its distractor tiles as one flat folder without building ids
    (:data:`DISTRACTOR` there; -1, unknown, elsewhere). Returns None when the folder holds no image.
    """
    buildings: list[tuple[int, str]] = []
    for name in _subdirs(view_dir):
        label = _int_label(name)
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
        files = _image_files(view_dir / bname)
        names.extend(f"{prefix}/{bname}/{f}" for f in files)
        labels.extend([label] * len(files))
    loose = _image_files(view_dir)
    names.extend(f"{prefix}/{f}" for f in loose)
    labels.extend([loose_label] * len(loose))
    if not names:
        return None
    return ImageList(root=root, names=tuple(names), labels=np.asarray(labels, np.int64), view=view_dir.name)


@_register("u1652", "<folder containing test/ and train/>")
def _read_u1652(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """University-1652: ``<root>/<split>/<view>/<id>/<image>``, label = building number ``<id>``."""
    del altitude
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
    loose = DISTRACTOR if view.startswith("gallery") else -1
    found = _read_id_folders(root, view_dir, layout, loose)
    if found is None:
        raise _no_images(view_dir, layout)
    return found


# SUES-200's split folders (its split script writes Training/ and Testing/) and altitudes.
_SUES_SPLITS = {"test": "Testing", "train": "Training"}
SUES200_ALTITUDES: tuple[int, ...] = (150, 200, 250, 300)


@_register("sues200", "<folder containing Testing/ and Training/>")
def _read_sues200(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """SUES-200: ``<root>/<Testing|Training>/<altitude>/<view>/<id>/<image>``, label = location ``<id>``."""
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
            f"no {folder}/ under {root} (found: {_listing(root)}); expected {layout}: run SUES-200's "
            "split script on the raw release, or point dataset.root at its output"
        )
    heights = sorted(n for n in _subdirs(split_dir) if _INT_NAME.fullmatch(n))
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
            f"view folder {view_dir} does not exist; views found under {alt_dir}: {_listing(alt_dir)}"
        )
    found = _read_id_folders(root, view_dir, layout)
    if found is None:
        raise _no_images(view_dir, layout)
    return found


# Pair layouts: one list of (ground, aerial) pairs per split; view -> column of the pair.
PAIR_VIEWS: tuple[str, str] = ("ground", "aerial")
_CVUSA_SPLITS = {
    "train": "splits/train-19zl.csv",
    "val": "splits/val-19zl.csv",
    "test": "splits/val-19zl.csv",
}


def _check_pair_view(layout: str, view: str) -> None:
    if view not in PAIR_VIEWS:
        raise UserError(
            f"view {view!r} does not exist in layout {layout}; its views are ground and aerial "
            "(set dataset.mode=G2A or A2G, or dataset.views=[ground, aerial])"
        )


def _pair_list(root: Path, view: str, names: list[str], where: str) -> ImageList:
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


def _posix_rel(name: str) -> str:
    """A CSV path as a clean POSIX path relative to the root (Windows separators, ./ prefix)."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


@_register("cvusa", "<folder containing splits/, bingmap/ and streetview/>")
def _read_cvusa(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """CVUSA: the pairs of ``splits/<split>-19zl.csv``; ``aerial`` = column 1, ``ground`` = column 2.

    ``split``: ``train`` or ``val``; ``test`` means ``val`` (the set CVUSA results are reported on).
    """
    del altitude
    _check_pair_view("cvusa", view)
    rel = _CVUSA_SPLITS.get(split.lower())
    if rel is None:
        raise UserError(f"dataset.split={split!r} does not exist for cvusa; use train or val")
    csv = root / rel
    if not csv.is_file():
        raise UserError(
            f"CVUSA split file {csv} does not exist; set dataset.root to the folder that contains "
            f"splits/ (found: {_listing(root)})"
        )
    column = 1 if view == "ground" else 0
    names: list[str] = []
    for lineno, line in enumerate(read_text_file(csv, "CVUSA split file", "restore the file").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(",")
        if len(parts) < 2:
            raise UserError(
                f"{csv} line {lineno} is not 'bingmap/19/<x>.jpg,streetview/panos/<x>.jpg,…'; restore the file"
            )
        names.append(_posix_rel(parts[column]))
    return _pair_list(root, view, names, str(csv))


def _mat_strings(value: np.ndarray) -> list[str]:
    """Strings of a MATLAB char matrix (rows, space-padded) or cell array, as scipy.io.loadmat gives them."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    out = []
    for cell in arr.reshape(-1):
        c = np.asarray(cell)
        out.append(str(c.reshape(-1)[0]).strip() if c.size else "")
    return out


def _mat_indices(mat: dict, struct: str, field_name: str, n: int, path: Path) -> np.ndarray:
    """0-based indices from a MATLAB struct field of 1-based indices (``trainSet.trainInd``)."""
    try:
        node = mat[struct]
        value = node[field_name] if isinstance(node, dict) else node[field_name].reshape(-1)[0]
        idx = np.asarray(value, dtype=np.float64).reshape(-1)
    except (KeyError, ValueError, IndexError, TypeError):
        raise UserError(
            f"{path} has no {struct}.{field_name}; it is not CVACT's ACT_data.mat (restore the file)"
        ) from None
    if idx.size and (not np.all(idx == np.round(idx)) or idx.min() < 1 or idx.max() > n):
        raise UserError(f"{path}: {struct}.{field_name} holds indices outside 1..{n}; restore the file")
    return idx.astype(np.int64) - 1


@_register("cvact", "<folder containing ACT_data.mat, streetview/ and satview_polish/>")
def _read_cvact(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """CVACT: ``ACT_data.mat`` pairs of one split (``train``; ``val`` = CVACT_val, also ``test``).

    ``ACT_data.mat`` is looked for in ``root`` and its parent (releases put it beside
    ``ANU_data_small/``); images under ``root`` or ``root/ANU_data_small``.
    """
    del altitude
    _check_pair_view("cvact", view)
    fields = {"train": ("trainSet", "trainInd"), "val": ("valSet", "valInd"), "test": ("valSet", "valInd")}
    if split.lower() not in fields:
        raise UserError(f"dataset.split={split!r} does not exist for cvact; use train or val")
    mat_path = next((p for p in (root / "ACT_data.mat", root.parent / "ACT_data.mat") if p.is_file()), None)
    if mat_path is None:
        raise UserError(
            f"ACT_data.mat not found in {root} or its parent; set dataset.root to the CVACT folder "
            "that holds it (with streetview/ and satview_polish/)"
        )
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError… for damaged files
        raise UserError(f"cannot read {mat_path} ({type(exc).__name__}); restore the file") from None
    if "panoIds" not in mat:
        raise UserError(f"{mat_path} has no panoIds; it is not CVACT's ACT_data.mat (restore the file)")
    pano = _mat_strings(mat["panoIds"])
    idx = _mat_indices(mat, *fields[split.lower()], len(pano), mat_path)
    base = (
        "" if (root / "streetview").is_dir() or not (root / "ANU_data_small").is_dir() else "ANU_data_small/"
    )
    if view == "ground":
        names = [f"{base}streetview/{pano[i]}_grdView.jpg" for i in idx]
    else:
        names = [f"{base}satview_polish/{pano[i]}_satView_polish.jpg" for i in idx]
    return _pair_list(root, view, names, f"{mat_path} ({split})")


@_register("folder", "<folder with one sub-folder of images per label>")
def _read_folder(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """Generic ``<root>/<label>/<image>``.

    Label folders that are all integers give those integers as labels; otherwise each label is the
    index of its folder name in the sorted list of folder names, recorded in ``label_names``. ``split``
    does not apply to this layout and is ignored.
    """
    del split, altitude
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
            f"splits/, satellite/ and ground/ (found under {root}: {_listing(root)})"
        )
    return path


def _read_vigor_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, 13 columns) of every non-empty row of a VIGOR label file."""
    rows = []
    for lineno, line in enumerate(read_text_file(path, "VIGOR split file", "restore the file").splitlines(), start=1):
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


@_register("vigor", "<VIGOR folder containing splits/, satellite/ and ground/>")
def _read_vigor(
    root: Path, view: str, split: str, altitude: int | None = None, area: str = "same"
) -> ImageList:
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
        raise UserError(f"the VIGOR {label_file} files of {', '.join(cities)} list no ground images; restore them")
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


@_register("denseuav", "<DenseUAV folder containing test/, train/ and Dense_GPS_ALL.txt>")
def _read_denseuav(root: Path, view: str, split: str, altitude: int | None = None) -> ImageList:
    """DenseUAV: ``<root>/<split>/<view>/<id>/<image>`` as University-1652 (``test/query_drone``,
    ``test/gallery_satellite``, ``train/drone``, ``train/satellite``); positions come from
    ``Dense_GPS_ALL.txt`` at the root, read by ``retrieve.geo`` (not needed for extraction)."""
    del altitude
    layout = "<root>/<split>/<view>/<id>/<image> (DenseUAV)"
    view_dir = root / split / view
    if not view_dir.is_dir():
        where = root / split if (root / split).is_dir() else root
        raise UserError(
            f"view folder {view_dir} does not exist (found under {where}: {_listing(where)}); expected {layout}"
        )
    found = _read_id_folders(root, view_dir, layout)
    if found is None:
        raise _no_images(view_dir, layout)
    return found


SEMI_POSITIVES_FILE = "semi_positives.h5"


def write_semi_positives(images: ImageList, entry_dir: Path) -> dict:
    """Store a VIGOR ground list's semi-positives beside the entry's shards; returns manifest fields.

    ``<entry>/semi_positives.h5`` (plain h5py): ``names [n]`` utf-8, the image names in list order, and
    ``semi_positives [n, 3]`` int64, the gallery labels of each image's semi-positives (the same
    numbering as the satellite entry's ``labels``). Rows are matched to the entry by name, so an image
    left out by ``--skip-bad`` does not shift them. Written to a temporary name, fsynced and renamed
    before the manifest, which records its sha256: an entry is complete only with it. ``{}`` and
    nothing written for lists without semi-positives.
    """
    if images.semi_positives is None:
        return {}
    import h5py

    path = Path(entry_dir) / SEMI_POSITIVES_FILE
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("semi_positives", data=np.asarray(images.semi_positives, dtype=np.int64))
            f.create_dataset("names", data=np.array(images.names, dtype=object), dtype=h5py.string_dtype("utf-8"))
        sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return {"semi_positives": {"file": SEMI_POSITIVES_FILE, "sha256": sha, "columns": 3}}


def read_semi_positives(entry_dir: Path, info: dict, names: list[str]) -> np.ndarray:
    """The semi-positives of an entry's rows (``names``, in row order) from its ``semi_positives.h5``.

    ``info`` is the manifest's ``extra["semi_positives"]``. Raises UserError when the file is missing,
    altered, or lacks one of the names.
    """
    import h5py

    path = Path(entry_dir) / str(info.get("file", SEMI_POSITIVES_FILE))
    fix = "run `pipeline cache rm` on that entry and extract it again"
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.get("sha256"):
            raise OSError("checksum mismatch")
        with h5py.File(path, "r") as f:
            semi = np.asarray(f["semi_positives"][...], dtype=np.int64)
            stored = [s.decode() if isinstance(s, bytes) else str(s) for s in f["names"][...]]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"semi-positives file {path} is unreadable or corrupt ({e}); {fix}") from None
    row = {n: i for i, n in enumerate(stored)}
    idx = [row.get(n, -1) for n in names]
    if -1 in idx or semi.ndim != 2 or semi.shape[0] != len(stored):
        raise UserError(f"semi-positives file {path} does not cover the entry's images; {fix}")
    return semi[np.asarray(idx, dtype=np.int64)]


# The original two first: messages list layouts in this order.
LAYOUTS: tuple[str, ...] = ("u1652", "folder", "sues200", "cvusa", "cvact", "vigor", "denseuav")
assert set(LAYOUTS) == set(_READERS)
PAIR_LAYOUTS: tuple[str, ...] = ("cvusa", "cvact")


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
        layout: one of :data:`LAYOUTS` (see the module docstring for each on-disk layout).
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
    reader = _READERS.get(layout)
    if reader is None:
        raise UserError(f"unknown dataset.layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    _check_simple_name("view", view)
    _check_simple_name("split", split)
    root_path = _resolve_root(root, _ROOT_HINTS[layout])
    if layout == "vigor":
        return _read_vigor(root_path, view, split, altitude, area=area)
    return reader(root_path, view, split, altitude)


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


# Directions of the pair layouts (CVUSA, CVACT): G = ground panorama, A = aerial tile. The street/
# satellite spellings of the University-1652 directions mean the same two roles there.
_PAIR_DIRECTIONS: dict[str, tuple[str, str]] = {"G2A": ("ground", "aerial"), "A2G": ("aerial", "ground")}
_PAIR_ALIASES: dict[str, str] = {
    "G2S": "G2A",
    "S2G": "A2G",
    "ground2aerial": "G2A",
    "aerial2ground": "A2G",
    **{a: ("G2A" if d == "G2S" else "A2G") for a, d in _ALIASES.items() if d in ("G2S", "S2G")},
}


def view_pair(mode: str, layout: str = "u1652") -> tuple[str, str]:
    """(query view, gallery view) of a retrieval direction, e.g. ``D2S`` -> drone query, satellite gallery.

    Accepts ``D2S S2D G2S S2G D2G G2D`` (any case) and spelled-out aliases such as ``drone2sat`` or
    ``street2sat``. For the pair layouts (``cvusa``, ``cvact``) the directions are ``G2A`` (ground
    query, aerial gallery) and ``A2G``; ``G2S``/``S2G`` and their aliases are accepted as the same.
    """
    key = mode.strip().lower()
    if layout == "vigor":
        # Ground panoramas against satellite tiles; the pair layouts' spellings mean the same roles.
        if key in ("g2s", "g2a", "ground2sat", "ground2satellite", "street2sat", "street2satellite", "ground2aerial"):
            return VIGOR_VIEWS
        if key in ("s2g", "a2g", "sat2ground", "satellite2ground", "sat2street", "satellite2street", "aerial2ground"):
            return VIGOR_VIEWS[1], VIGOR_VIEWS[0]
        raise UserError(
            f"dataset.mode={mode!r} does not apply to layout vigor (ground/satellite); set dataset.mode=G2S "
            "(ground query, satellite gallery) or S2G"
        )
    if layout in PAIR_LAYOUTS:
        canon = {k.lower(): k for k in _PAIR_DIRECTIONS}
        canon.update({k.lower(): v for k, v in _PAIR_ALIASES.items()})
        found = canon.get(key)
        if found is None:
            raise UserError(
                f"dataset.mode={mode!r} does not apply to layout {layout} (ground/aerial pairs); "
                "set dataset.mode=G2A (ground query, aerial gallery) or A2G"
            )
        return _PAIR_DIRECTIONS[found]
    canon = {k.lower(): k for k in _DIRECTIONS}
    canon.update({k.lower(): v for k, v in _ALIASES.items()})
    found = canon.get(key)
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
