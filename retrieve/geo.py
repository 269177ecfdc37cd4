"""What a dataset says about its images beyond labels: GPS positions and VIGOR's semi-positives.

GPS metrics (``retrieve.geo=true``), from the top-K lists of the exact pass (junk already removed):

* ``SDM@K`` -- DenseUAV's Spatial Distance Metric (``evaluateDistance.py``: ``evaluateSingle``): with
  ``d_i`` the Euclidean distance in degrees between the (lon, lat) of the query and of its i-th retrieved
  item, ``SDM = sum_i w_i exp(-s d_i) / sum_i w_i`` with ``w_i = 1 - i / K`` for ``i = 0 .. K-1``,
  averaged over queries, in percent; ``s`` = ``retrieve.sdm_scale`` (DenseUAV: 5,000). DenseUAV's script
  rounds coordinates to float32 before subtracting; here they stay float64.
* ``MA@<m>m`` -- DenseUAV's ``evaluateMA.py``: the share of queries whose top-1 lies strictly closer than
  ``m`` metres, by the haversine formula with Earth radius 6,378.137 km (the script's ``latlog2meter``).
* ``dist_m_mean`` / ``dist_m_median`` -- of that top-1 distance in metres.

Radius positives (``protocol=vpr``) read every row's position through :func:`entry_positions_of`.

Positions come from a file in DenseUAV's ``Dense_GPS_ALL.txt`` format (one line per image,
``<path> E<lon> N<lat> …``; an image's location id is the folder above it, and, as in DenseUAV's
scripts, the last line of a location wins), given as ``dataset.gps`` or found as ``Dense_GPS_ALL.txt``
at the dataset root; otherwise from VIGOR's file names (``satellite_<lat>_<lon>.png``,
``<pano id>,<lat>,<lon>,.jpg``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cvgl.core.errors import UserError
from cvgl.datasets.vpr_positions import PointPositions

if TYPE_CHECKING:
    from cvgl.cache.store import CacheStore, Entry

EARTH_RADIUS_KM = 6378.137  # DenseUAV's latlog2meter (the WGS-84 equatorial radius)
DENSEUAV_GPS_FILE = "Dense_GPS_ALL.txt"
_VIGOR_SAT = re.compile(r"^satellite_(-?[0-9]+(?:\.[0-9]*)?)_(-?[0-9]+(?:\.[0-9]*)?)\.[A-Za-z]+$")
_GPS_FORMAT = "'<path> E<longitude> N<latitude> …' (DenseUAV's Dense_GPS_ALL.txt)"


def haversine_m(lat_a: Any, lon_a: Any, lat_b: Any, lon_b: Any) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (arrays broadcast)."""
    la, lb = np.radians(np.asarray(lat_a, np.float64)), np.radians(np.asarray(lat_b, np.float64))
    dlat = la - lb
    dlon = np.radians(np.asarray(lon_a, np.float64)) - np.radians(np.asarray(lon_b, np.float64))
    h = np.sin(dlat / 2) ** 2 + np.cos(la) * np.cos(lb) * np.sin(dlon / 2) ** 2
    # min(1, …): rounding can push h a hair above 1 for antipodal points, and asin would give NaN.
    return 2.0 * np.arcsin(np.sqrt(np.minimum(h, 1.0))) * EARTH_RADIUS_KM * 1000.0


def read_gps_file(path: str | Path) -> dict[str, tuple[float, float]]:
    """``{location id: (lon, lat)}`` from a file in DenseUAV's ``Dense_GPS_ALL.txt`` format.

    The location id is the folder above each listed image; a later line for the same location replaces
    an earlier one, as in DenseUAV's evaluation scripts. A malformed line is a UserError naming it.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"positions file {p} does not exist; point dataset.gps at the GPS file ({DENSEUAV_GPS_FILE} for DenseUAV)"
        )
    out: dict[str, tuple[float, float]] = {}
    for lineno, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        try:
            if len(cols) < 3 or cols[1][:1] != "E" or cols[2][:1] != "N":
                raise ValueError
            lon, lat = float(cols[1][1:]), float(cols[2][1:])
            if not (math.isfinite(lon) and math.isfinite(lat) and -180 <= lon <= 180 and -90 <= lat <= 90):
                raise ValueError
        except ValueError:
            shown = line.strip()[:80]
            raise UserError(
                f"{p} line {lineno} is not {_GPS_FORMAT}: {shown!r}; fix or remove that line"
            ) from None
        parts = cols[0].replace("\\", "/").split("/")
        if len(parts) >= 2:
            out[parts[-2]] = (lon, lat)
    return out


def vigor_position(name: str) -> tuple[float, float] | None:
    """(lon, lat) from a VIGOR file name, or None: ``satellite_<lat>_<lon>.png`` or
    ``<pano id>,<lat>,<lon>,.jpg``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    m = _VIGOR_SAT.match(base)
    try:
        if m:
            lat, lon = float(m.group(1)), float(m.group(2))
        else:
            parts = base.split(",")
            if len(parts) < 4:
                return None
            lat, lon = float(parts[1]), float(parts[2])
    except ValueError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lon, lat


def positions_for(names: Sequence[str], *, gps: str | None, root: Path | None, what: str) -> np.ndarray:
    """(lon, lat) float64 ``[n, 2]`` of every name: from ``gps`` (a Dense_GPS_ALL.txt-format file), else
    ``<root>/Dense_GPS_ALL.txt`` when it exists, else VIGOR file names. Any name without a position is a
    UserError naming how many and one of them (``what``: query or gallery, for the message)."""
    source = Path(gps).expanduser() if gps else None
    if source is None and root is not None and (Path(root) / DENSEUAV_GPS_FILE).is_file():
        source = Path(root) / DENSEUAV_GPS_FILE
    out = np.full((len(names), 2), np.nan, dtype=np.float64)
    if source is not None:
        table = read_gps_file(source)
        for i, n in enumerate(names):
            parts = n.replace("\\", "/").split("/")
            pos = table.get(parts[-2]) if len(parts) >= 2 else None
            if pos is not None:
                out[i] = pos
    else:
        for i, n in enumerate(names):
            pos = vigor_position(n)
            if pos is not None:
                out[i] = pos
    missing = np.flatnonzero(np.isnan(out[:, 0]))
    if missing.size:
        first = names[int(missing[0])]
        if source is not None:
            raise UserError(
                f"positions missing for {missing.size} of {len(names)} {what} images in {source} (looked up by "
                f"the folder above each image, e.g. {first!r}); add their locations to the file or point "
                "dataset.gps at a complete one"
            )
        raise UserError(
            f"positions missing for {missing.size} of {len(names)} {what} images, e.g. {first!r} (no GPS file "
            f"and no position in the name); set dataset.gps=FILE with lines {_GPS_FORMAT}"
        )
    return out


def sdm_per_query(q_pos: np.ndarray, g_pos: np.ndarray, topk: np.ndarray, k: int, scale: float) -> np.ndarray:
    """DenseUAV's SDM@K of each query (fraction, not percent) from its top-K gallery rows."""
    top = np.asarray(topk, dtype=np.int64)[:, :k]
    if top.shape[1] < k or (top < 0).any():
        raise UserError(f"SDM@{k} needs {k} retrieved items per query; set retrieve.topk to at least {k}")
    d = np.sqrt(((g_pos[top] - q_pos[:, None, :]) ** 2).sum(-1))  # degrees, [n, k]
    w = 1.0 - np.arange(k, dtype=np.float64) / k
    return (np.exp(-scale * d) * w).sum(1) / w.sum()


def geo_metrics(
    q_pos: np.ndarray,
    g_pos: np.ndarray,
    topk: np.ndarray,
    ks: Sequence[int],
    *,
    scale: float,
    ma_metres: Sequence[float],
) -> dict[str, float]:
    """``SDM@K`` for each K, ``MA@<m>m`` for each m (percent), ``dist_m_mean`` and ``dist_m_median``.

    ``q_pos`` / ``g_pos``: (lon, lat) per query / gallery row; ``topk``: gallery rows, best first.
    """
    top = np.asarray(topk, dtype=np.int64)
    if top.ndim != 2 or top.shape[0] != q_pos.shape[0] or top.shape[1] < 1:
        raise UserError(f"top lists of shape {top.shape} do not match {q_pos.shape[0]} queries")
    out: dict[str, float] = {}
    for k in ks:
        out[f"SDM@{k}"] = 100.0 * float(np.mean(sdm_per_query(q_pos, g_pos, top, int(k), scale)))
    first = g_pos[top[:, 0]]
    dist = haversine_m(q_pos[:, 1], q_pos[:, 0], first[:, 1], first[:, 0])
    for m in ma_metres:
        label = f"{m:g}"
        out[f"MA@{label}m"] = 100.0 * float(np.mean(dist < m))
    out["dist_m_mean"] = float(np.mean(dist))
    out["dist_m_median"] = float(np.median(dist))
    return out


def load_semi_positives(store: CacheStore, entry: Entry) -> np.ndarray | None:
    """VIGOR semi-positives of ``entry``'s rows (int64 ``[n, 3]`` gallery labels), from its own
    ``semi_positives.h5`` or, for aligned entries, from the entry it was computed from; None if none."""
    from cvgl.cache.positions import inherited_extra
    from cvgl.datasets.layouts import read_semi_positives

    found = inherited_extra(store, entry, "semi_positives")
    if found is None:
        return None
    key, info = found
    return read_semi_positives(store.entry_dir(key), info, entry.names())


def geo_topk(requested: int | None, resolved: int, ks: Sequence[int], n_rankable: int) -> int:
    """Top-list length with ``retrieve.geo``: SDM@K reads K items per query, so at least max(ks)."""
    need = max(int(k) for k in ks)
    if need > n_rankable:
        raise UserError(
            f"SDM@{need} needs {need} retrieved items per query but the gallery has {n_rankable} rankable "
            f"items; lower retrieve.ks to at most {n_rankable}"
        )
    if requested is not None and requested < need:
        raise UserError(
            f"retrieve.geo computes SDM@{need} but retrieve.topk={requested}; set retrieve.topk to at least "
            f"{need} or leave it unset"
        )
    return max(resolved, need)


def semi_positives_for(cfg: Any, store: CacheStore, entry: Entry, query: str) -> np.ndarray:
    """The semi-positives protocol ``vigor`` needs for query entry ``entry`` (alias ``query``)."""
    rc = cfg.retrieve
    if getattr(rc, "multi_query", False):
        raise UserError("retrieve.multi_query merges query rows; it does not apply to protocol=vigor")
    if rc.rerank != "none":
        raise UserError("retrieve.rerank does not apply to protocol=vigor; set retrieve.rerank=none")
    semi = load_semi_positives(store, entry)
    if semi is None:
        raise UserError(
            f"query entry {query} holds no VIGOR semi-positives (semi_positives.h5); extract its ground "
            "view with dataset.layout=vigor, or use protocol=u1652"
        )
    return semi


def entry_positions(
    cfg: Any, q_names: Sequence[str], g_names: Sequence[str], q_root: Path | None, g_root: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    """(query, gallery) positions for ``retrieve.geo``, before the expensive pass (fail fast)."""
    gps = cfg.dataset.gps
    return (
        positions_for(q_names, gps=gps, root=q_root, what="query"),
        positions_for(g_names, gps=gps, root=g_root, what="gallery"),
    )


def stored_positions_file(store: CacheStore, entry: Entry) -> Path | None:
    """The positions table kept beside ``entry`` (``point_positions.csv`` in its folder, written by
    ``pipeline cache import``), else beside the entry it was computed from (aligned entries keep their
    parents' rows and names); None when there is none."""
    from cvgl.cache.positions import entry_chain
    from cvgl.datasets.vpr_positions import POSITIONS_TABLE

    for key, _ in entry_chain(store, entry, depth=5):
        p = store.entry_dir(key) / POSITIONS_TABLE
        if p.is_file():
            return p
    return None


def _positions_h5_of(store: CacheStore, entry: Entry) -> tuple[Path, dict] | None:
    """(entry folder, manifest ``extra["positions"]``) of the ``positions.h5`` kept with ``entry`` or the
    entry it was computed from (aligned entries keep their parents' rows and names); None when none."""
    from cvgl.cache.positions import inherited_extra

    found = inherited_extra(store, entry, "positions")
    return None if found is None else (store.entry_dir(found[0]), found[1])


def entry_positions_of(
    cfg: Any, store: CacheStore, entry: Entry, names: Sequence[str], what: str, root: Path | None = None
) -> PointPositions:
    """Every row's position for radius positives (``protocol=vpr``): the one place positions are read.

    Sources, first found wins: ``dataset.gps`` (DenseUAV's format, lat/lon); the entry's ``positions.h5``
    (map tiles' centres, frames' positions; or its parent's) when every row has one; the positions table
    stored beside the entry or its parents; VPR-style ``@utm_east@utm_north@…`` names; ``Dense_GPS_ALL.txt`` at
    the dataset root ``root`` or VIGOR names. A row without a position is a UserError naming how to give one.
    """
    from cvgl.datasets.vpr_positions import LATLON, lookup, positions_from_names, read_positions_csv

    def latlon_from_gps(root: Path | None) -> PointPositions:
        lonlat = positions_for(names, gps=cfg.dataset.gps, root=root, what=what)
        return PointPositions(LATLON, lonlat[:, ::-1].copy())

    if cfg.dataset.gps:
        return latlon_from_gps(None)
    stored = _positions_h5_of(store, entry)
    if stored is not None:
        from cvgl.datasets.positions import read_positions

        h5 = read_positions(stored[0], stored[1], names)
        latlon = np.stack([h5.lat, h5.lon], axis=1)
        if not np.isnan(latlon).any():
            return PointPositions(LATLON, latlon)
    table = stored_positions_file(store, entry)
    if table is not None:
        kind, rows = read_positions_csv(table)
        pos = lookup(rows, kind, names)
        missing = pos.missing()
        if missing.size:
            raise UserError(
                f"{table} has no position for {missing.size} of {len(names)} {what} rows, e.g. "
                f"{names[int(missing[0])]!r}; import a positions.csv that lists every name "
                f"(pipeline cache import positions.csv --alias {entry.label})"
            )
        return pos
    pos = positions_from_names(names)
    if pos is not None:
        return pos
    try:
        return latlon_from_gps(root)
    except UserError:
        raise UserError(
            f"protocol=vpr needs a position for every {what} row and {what} entry {entry.label} has none "
            f"(e.g. {names[0]!r}); name images @utm_east@utm_north@…@.jpg as VPR-methods-evaluation does, set "
            f"dataset.gps=FILE, or import a positions.csv (name,lat,lon) with pipeline cache import "
            f"positions.csv --alias {entry.label}"
        ) from None
