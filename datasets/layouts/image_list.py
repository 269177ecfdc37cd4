"""The unit every stage works on: :class:`ImageList`, one view's images with integer labels, named by
POSIX paths relative to the dataset root in a deterministic order, so a folder gives the same list (and
the same cache key) on every machine. Also what an image name may hold, and one label vocabulary for a
query and a gallery list."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError
from cvgl.datasets.maps import TileSource
from cvgl.datasets.positions import Positions

# Label of a gallery item that is known not to match any query (University-1652's flat 160k
# distractor tiles): a negative in every ranking. -1 stays "junk / unknown", removed from rankings.
DISTRACTOR = -2


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
