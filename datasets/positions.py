"""Geographic positions of an entry's rows: map tiles' centres and footprints, frames' true positions.

Stored beside the entry's shards as ``<entry>/positions.h5`` (plain h5py, readable without the tool):

* ``names [n]`` utf-8: the image / tile names in list order (rows are matched to the entry by name,
  so an image left out by ``--skip-bad`` does not shift them);
* ``lat [n]``, ``lon [n]`` float64: WGS84 degrees; a tile's centre or a frame's true position; NaN
  when unknown;
* ``footprint [n, 4, 2]`` float64: a tile's corners left-top, right-top, right-bottom, left-bottom,
  each ``(lat, lon)``; NaN for frames;
* ``time [n]`` seconds, ``height [n]`` metres, ``yaw [n]`` degrees, float64; NaN when unknown;
* ``sequence [n]`` utf-8: the flight a frame belongs to (a UAV-VisLoc region such as ``"01"``, or the
  query folder's name); ``""`` for tiles.

The file is written to a temporary name, fsynced and renamed before the manifest, which records its
sha256 in ``extra["positions"]``: an entry is complete only with it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError

POSITIONS_FILE = "positions.h5"
POSITIONS_CSV_HEADER = (
    "name",
    "lat",
    "lon",
    "lt_lat",
    "lt_lon",
    "rt_lat",
    "rt_lon",
    "rb_lat",
    "rb_lon",
    "lb_lat",
    "lb_lon",
)
_FLOAT_FIELDS = ("lat", "lon", "time", "height", "yaw")


@dataclass(eq=False)
class Positions:
    """Per-row positions of one image list or entry (see the module docstring for each field)."""

    names: list[str]
    lat: np.ndarray
    lon: np.ndarray
    footprint: np.ndarray
    time: np.ndarray
    height: np.ndarray
    yaw: np.ndarray
    sequence: list[str]

    def __post_init__(self) -> None:
        n = len(self.names)
        self.names = [str(x) for x in self.names]
        for name in _FLOAT_FIELDS:
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.shape[0] != n:
                raise ValueError(f"Positions.{name} has {arr.shape[0]} values for {n} names")
            setattr(self, name, arr)
        fp = np.asarray(self.footprint, dtype=np.float64)
        if fp.shape != (n, 4, 2):
            raise ValueError(f"Positions.footprint has shape {fp.shape}, expected ({n}, 4, 2)")
        self.footprint = fp
        self.sequence = [str(s) for s in self.sequence]
        if len(self.sequence) != n:
            raise ValueError(f"Positions.sequence has {len(self.sequence)} values for {n} names")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty_like(cls, names: Sequence[str], sequence: str = "") -> Positions:
        """All-unknown positions for ``names`` (NaN everywhere), in one ``sequence``."""
        n = len(names)
        nan = np.full(n, np.nan)
        return cls(
            names=list(names),
            lat=nan.copy(),
            lon=nan.copy(),
            footprint=np.full((n, 4, 2), np.nan),
            time=nan.copy(),
            height=nan.copy(),
            yaw=nan.copy(),
            sequence=[sequence] * n,
        )

    def take(self, idx: Sequence[int] | np.ndarray) -> Positions:
        """The rows ``idx``, in that order."""
        ix = np.asarray(idx, dtype=np.int64)
        return Positions(
            names=[self.names[i] for i in ix],
            lat=self.lat[ix],
            lon=self.lon[ix],
            footprint=self.footprint[ix],
            time=self.time[ix],
            height=self.height[ix],
            yaw=self.yaw[ix],
            sequence=[self.sequence[i] for i in ix],
        )

    @staticmethod
    def concat(parts: Sequence[Positions]) -> Positions:
        """Rows of ``parts`` one after the other."""
        return Positions(
            names=[n for p in parts for n in p.names],
            lat=np.concatenate([p.lat for p in parts]) if parts else np.zeros(0),
            lon=np.concatenate([p.lon for p in parts]) if parts else np.zeros(0),
            footprint=np.concatenate([p.footprint for p in parts]) if parts else np.zeros((0, 4, 2)),
            time=np.concatenate([p.time for p in parts]) if parts else np.zeros(0),
            height=np.concatenate([p.height for p in parts]) if parts else np.zeros(0),
            yaw=np.concatenate([p.yaw for p in parts]) if parts else np.zeros(0),
            sequence=[s for p in parts for s in p.sequence],
        )


def write_positions(p: Positions, entry_dir: Path) -> dict:
    """Write ``<entry_dir>/positions.h5`` atomically; returns the manifest's ``extra`` fields."""
    import h5py

    path = Path(entry_dir) / POSITIONS_FILE
    utf8 = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("names", data=np.array(p.names, dtype=object), dtype=utf8)
            for name in _FLOAT_FIELDS:
                f.create_dataset(name, data=getattr(p, name))
            f.create_dataset("footprint", data=p.footprint)
            f.create_dataset("sequence", data=np.array(p.sequence, dtype=object), dtype=utf8)
        sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return {"positions": {"file": POSITIONS_FILE, "sha256": sha}}


def read_positions(entry_dir: Path, info: dict, names: Sequence[str]) -> Positions:
    """The positions of an entry's rows (``names``, in row order) from its ``positions.h5``.

    ``info`` is the manifest's ``extra["positions"]``. Raises UserError when the file is missing,
    altered, or lacks one of the names.
    """
    import h5py

    path = Path(entry_dir) / str(info.get("file", POSITIONS_FILE))
    fix = "run `pipeline cache rm` on that entry and extract it again"
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.get("sha256"):
            raise OSError("checksum mismatch")
        with h5py.File(path, "r") as f:
            stored = [s.decode() if isinstance(s, bytes) else str(s) for s in f["names"][...]]
            fields = {name: np.asarray(f[name][...], dtype=np.float64) for name in _FLOAT_FIELDS}
            footprint = np.asarray(f["footprint"][...], dtype=np.float64)
            sequence = [s.decode() if isinstance(s, bytes) else str(s) for s in f["sequence"][...]]
        whole = Positions(names=stored, footprint=footprint, sequence=sequence, **fields)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"positions file {path} is unreadable or corrupt ({e}); {fix}") from None
    row = {n: i for i, n in enumerate(stored)}
    idx = [row.get(n, -1) for n in names]
    if -1 in idx:
        raise UserError(f"positions file {path} does not cover the entry's images; {fix}")
    return whole.take(idx)


def positions_csv_text(p: Positions) -> str:
    """``positions.csv``: ``name,lat,lon,lt_lat,lt_lon,…,lb_lon``, one row per entry row, in row order.

    Unknown values are empty cells; coordinates are written with full float64 precision.
    """

    def cell(v: float) -> str:
        return "" if not np.isfinite(v) else repr(float(v))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(POSITIONS_CSV_HEADER)
    for i, name in enumerate(p.names):
        corners = [cell(v) for v in p.footprint[i].reshape(-1)]
        w.writerow([name, cell(p.lat[i]), cell(p.lon[i]), *corners])
    return buf.getvalue()
