"""Image positions for radius-based positives: UTM or lat/lon per image, from names or a CSV table.

Sources read here (pure functions; which entry a table belongs to is decided above, in
``retrieve/geo.py``):

* VPR-methods-evaluation's file names (the format of VPR-datasets-downloader):
  ``@utm_east@utm_north@utm_zone_number@utm_zone_letter@lat@lon@…@.jpg``. Its ``test_dataset.py``
  reads fields ``[1]`` and ``[2]`` of ``name.split("@")`` as UTM east/north; fields ``[5]`` and ``[6]``
  (lat, lon) are read when present.
* A positions table (``positions.csv``): a header with ``name`` and either ``lat,lon`` or
  ``utm_east,utm_north``; one row per image name.

:func:`radius_positives` gives, per query, the gallery rows within a radius (metres, inclusive, like
scikit-learn's ``radius_neighbors`` that VPR-methods-evaluation uses): Euclidean on UTM east/north (zones
are ignored, as the reference does), great-circle on lat/lon (Earth radius 6,378.137 km, as
``retrieve.geo``'s haversine).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cvgl.core.errors import UserError

EARTH_RADIUS_M = 6378.137e3
POSITIONS_TABLE = "point_positions.csv"  # kept beside an entry by `cache import TABLE.csv --alias`
POSITIONS_CSV = "positions.csv"  # a table inside an imported folder
UTM = "utm"
LATLON = "latlon"
_COLUMNS = {LATLON: ("lat", "lon"), UTM: ("utm_east", "utm_north")}


@dataclass
class PointPositions:
    """Per-image positions: ``xy`` float64 ``[n, 2]`` as (east, north) metres for ``utm`` or (lat, lon)
    degrees for ``latlon``; NaN rows have no position. ``latlon`` may ride along with ``utm`` (names that
    carry both), so two sides in different kinds can still be compared."""

    kind: str
    xy: np.ndarray
    latlon: np.ndarray | None = None

    def missing(self) -> np.ndarray:
        return np.flatnonzero(np.isnan(self.xy).any(axis=1))

    def as_latlon(self) -> np.ndarray | None:
        return self.xy if self.kind == LATLON else self.latlon


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def at_name_position(name: str) -> tuple[float, float, float | None, float | None] | None:
    """(utm_east, utm_north, lat, lon) from a VPR-style ``@``-separated file name, or None.

    Only the base name is read (folders may hold ``@`` too); lat/lon are None when fields 5 and 6 are
    absent or not numbers.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    fields = base.split("@")
    if len(fields) < 3:
        return None
    east, north = _float(fields[1]), _float(fields[2])
    if east is None or north is None:
        return None
    lat = _float(fields[5]) if len(fields) > 6 else None
    lon = _float(fields[6]) if len(fields) > 6 else None
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    return east, north, lat, lon


def positions_from_names(names: Sequence[str]) -> PointPositions | None:
    """PointPositions from ``@`` names when every name carries UTM fields, else None."""
    xy = np.empty((len(names), 2), np.float64)
    ll = np.empty((len(names), 2), np.float64)
    have_ll = True
    for i, n in enumerate(names):
        p = at_name_position(n)
        if p is None:
            return None
        xy[i] = p[0], p[1]
        if p[2] is None:
            have_ll = False
        else:
            ll[i] = p[2], p[3]
    if not names:
        return None
    return PointPositions(UTM, xy, ll if have_ll else None)


def read_positions_csv(path: Path) -> tuple[str, dict[str, tuple[float, float]]]:
    """(kind, {name: (a, b)}) from a positions table; a malformed file is a UserError naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"positions file {path} is not UTF-8 text; save it as CSV with a header") from None
    except OSError as e:
        raise UserError(f"positions file {path} cannot be read ({e.strerror or e})") from None
    rows = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(rows, [])]
    kind = next((k for k, cols in _COLUMNS.items() if set(cols) <= set(header)), None)
    if "name" not in header or kind is None:
        raise UserError(
            f"positions file {path} has header {header}; it needs columns name,lat,lon or "
            "name,utm_east,utm_north"
        )
    ni, ai, bi = header.index("name"), header.index(_COLUMNS[kind][0]), header.index(_COLUMNS[kind][1])
    out: dict[str, tuple[float, float]] = {}
    for lineno, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        a = _float(row[ai]) if len(row) > max(ai, bi, ni) else None
        b = _float(row[bi]) if a is not None else None
        if a is None or b is None or (kind == LATLON and not (-90 <= a <= 90 and -180 <= b <= 180)):
            raise UserError(
                f"{path} line {lineno} is not name,{','.join(_COLUMNS[kind])} with numbers: {','.join(row)[:80]!r}; "
                "fix or remove that line"
            )
        out[row[ni]] = (a, b)
    if not out:
        raise UserError(f"positions file {path} lists no images; add one row per image name")
    return kind, out


def write_positions_csv(path: Path, kind: str, names: Sequence[str], xy: np.ndarray) -> None:
    """Write a positions table (the format :func:`read_positions_csv` reads), atomically."""
    from cvgl.core.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", *_COLUMNS[kind]])
        for n, (a, b) in zip(names, xy):
            w.writerow([n, repr(float(a)), repr(float(b))])


def lookup(table: dict[str, tuple[float, float]], kind: str, names: Sequence[str]) -> PointPositions:
    """PointPositions of ``names`` from a table by exact name (NaN where absent)."""
    xy = np.full((len(names), 2), np.nan, np.float64)
    for i, n in enumerate(names):
        p = table.get(n)
        if p is not None:
            xy[i] = p
    return PointPositions(kind, xy)


def _unit_vectors(latlon: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def radius_positives(query: PointPositions, gallery: PointPositions, radius_m: float) -> list[np.ndarray]:
    """Per query, the sorted gallery rows within ``radius_m`` metres (inclusive).

    Both sides in UTM: Euclidean distance on (east, north), as VPR-methods-evaluation. Otherwise both
    need lat/lon: great-circle distance, found as the chord ``2 R sin(r / 2R)`` between unit vectors,
    which orders points exactly as the arc does. A gallery row without a position is no one's positive.
    """
    from scipy.spatial import cKDTree

    if not radius_m > 0:
        raise UserError(f"retrieve.positive_radius_m must be a positive distance in metres, got {radius_m}")
    if query.kind == UTM and gallery.kind == UTM:
        q, g, r = query.xy, gallery.xy, float(radius_m)
    else:
        ql, gl = query.as_latlon(), gallery.as_latlon()
        if ql is None or gl is None:
            raise UserError(
                "the query positions are in "
                f"{query.kind} and the gallery's in {gallery.kind}, with no lat/lon on the UTM side; give both "
                "sides positions of the same kind (names with @utm_east@utm_north@…, or a positions.csv)"
            )
        q, g = _unit_vectors(ql), _unit_vectors(gl)
        r = 2.0 * math.sin(min(float(radius_m) / (2.0 * EARTH_RADIUS_M), math.pi / 2))
    keep = np.flatnonzero(~np.isnan(g).any(axis=1))
    tree = cKDTree(g[keep])
    found = tree.query_ball_point(np.nan_to_num(q, nan=np.inf), r)
    return [np.sort(keep[np.asarray(f, dtype=np.int64)]) for f in found]
