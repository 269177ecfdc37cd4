"""Which map tiles contain a point: the positives of ``protocol=map``.

A tile is a positive of a frame when the frame's true position lies inside the tile's footprint (its
four corners lt, rt, rb, lb as (lat, lon)), boundary included. Every overlapping tile counts, at
every scale. Footprints are convex quadrilaterals (a square window of a raster, mapped to WGS84 by
an affine georeference and a smooth reprojection); the test is the sign of the four edge cross
products, computed in local metres around the frame (an equirectangular projection at the frame's
latitude, exact enough over a tile's few hundred metres).

No frames × gallery matrix is formed: tiles are bucketed on a uniform lat/lon grid whose cells are as
large as the largest tile's bounding box, keyed by the cell of the box's lower-left corner; a point
can then only lie in tiles keyed by its own cell or the three cells below and to its left. The work
is proportional to the number of (frame, nearby tile) pairs. Maps crossing the antimeridian are not
handled (their footprints span ±180°).
"""

from __future__ import annotations

import numpy as np
from cvgl.core.errors import UserError

# Metres per degree of latitude on the sphere of retrieve.geo's haversine (radius 6,378.137 km).
_M_PER_DEG = 6378137.0 * np.pi / 180.0
# Points this close to an edge (metres) count as inside: a frame cut exactly on a tile border
# belongs to both tiles, whatever the float rounding of the corners.
_EDGE_TOL_M = 1e-6


def _check_footprints(footprint: np.ndarray) -> np.ndarray:
    fp = np.asarray(footprint, dtype=np.float64)
    if fp.ndim != 3 or fp.shape[1:] != (4, 2):
        raise UserError(f"tile footprints must have shape [n, 4, 2] (corners × lat/lon), got {fp.shape}")
    return fp


def contains(footprint: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Elementwise: is point (lat[i], lon[i]) inside quadrilateral footprint[i] ([n, 4, 2])? Boundary in.

    NaN corners or a NaN point give False.
    """
    fp = _check_footprints(footprint)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    scale = np.cos(np.radians(lat))[:, None]
    # Corners relative to the point, in metres.
    y = (fp[:, :, 0] - lat[:, None]) * _M_PER_DEG
    x = (fp[:, :, 1] - lon[:, None]) * _M_PER_DEG * scale
    x2, y2 = np.roll(x, -1, axis=1), np.roll(y, -1, axis=1)
    # Cross product of edge (c_j -> c_j+1) with (c_j -> point), divided by the edge length: the signed
    # distance of the point from the edge's line, in metres.
    cross = x * y2 - y * x2
    length = np.hypot(x2 - x, y2 - y)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = cross / np.where(length > 0, length, 1.0)
    ok = np.isfinite(dist).all(1)
    inside = (dist >= -_EDGE_TOL_M).all(1) | (dist <= _EDGE_TOL_M).all(1)
    return ok & inside


def footprint_positives(
    lat: np.ndarray, lon: np.ndarray, footprint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (frame, tile) pair with the frame's position inside the tile's footprint, as CSR.

    Returns ``(indptr [n_frames + 1], tiles)``: frame ``i``'s positive tile rows are
    ``tiles[indptr[i]:indptr[i + 1]]``, ascending. Frames with a NaN position have none; tiles with
    NaN corners are never positives.
    """
    fp = _check_footprints(footprint)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise UserError(f"{lat.shape[0]} latitudes but {lon.shape[0]} longitudes; give one of each per frame")
    n_q = lat.shape[0]
    valid_t = np.flatnonzero(np.isfinite(fp).all(axis=(1, 2)))
    valid_q = np.flatnonzero(np.isfinite(lat) & np.isfinite(lon))
    if valid_t.size == 0 or valid_q.size == 0:
        return np.zeros(n_q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lo = fp[valid_t].min(axis=1)  # [t, 2] (lat, lon) of the bounding box's lower-left corner
    hi = fp[valid_t].max(axis=1)
    cell = np.maximum((hi - lo).max(axis=0), 1e-9) * (1 + 1e-9)  # (dlat, dlon) of one grid cell
    origin = lo.min(axis=0)
    t_cell = np.floor((lo - origin) / cell).astype(np.int64)
    width = int(t_cell[:, 1].max()) + 3
    t_key = t_cell[:, 0] * width + t_cell[:, 1]
    order = np.argsort(t_key, kind="stable")
    sorted_keys = t_key[order]
    sorted_tiles = valid_t[order]

    q_cell = np.floor((np.stack([lat[valid_q], lon[valid_q]], 1) - origin) / cell).astype(np.int64)
    pair_q, pair_t = [], []
    for d_lat in (0, -1):
        for d_lon in (0, -1):
            c_lat, c_lon = q_cell[:, 0] + d_lat, q_cell[:, 1] + d_lon
            inside_grid = (c_lon >= 0) & (c_lon < width) & (c_lat >= 0)
            key = np.where(inside_grid, c_lat * width + c_lon, -1)
            start = np.searchsorted(sorted_keys, key, side="left")
            stop = np.where(inside_grid, np.searchsorted(sorted_keys, key, side="right"), start)
            counts = stop - start
            total = int(counts.sum())
            if total == 0:
                continue
            q_rep = np.repeat(valid_q, counts)
            # Positions within each run: a global arange minus each run's start offset in the output.
            run_start = np.repeat(np.cumsum(counts) - counts, counts)
            t_rep = sorted_tiles[np.repeat(start, counts) + np.arange(total) - run_start]
            pair_q.append(q_rep)
            pair_t.append(t_rep)
    if not pair_q:
        return np.zeros(n_q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    q_all = np.concatenate(pair_q)
    t_all = np.concatenate(pair_t)
    keep = np.zeros(q_all.shape[0], dtype=bool)
    step = 1 << 20  # bounded scratch memory on huge candidate sets
    for s in range(0, q_all.shape[0], step):
        sl = slice(s, s + step)
        keep[sl] = contains(fp[t_all[sl]], lat[q_all[sl]], lon[q_all[sl]])
    q_all, t_all = q_all[keep], t_all[keep]
    order = np.lexsort((t_all, q_all))
    q_all, t_all = q_all[order], t_all[order]
    indptr = np.zeros(n_q + 1, dtype=np.int64)
    np.cumsum(np.bincount(q_all, minlength=n_q), out=indptr[1:])
    return indptr, t_all


def tile_radius_m(footprint: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Largest distance in metres from each tile's centre (lat, lon) to its corners (0 for NaN corners)."""
    fp = _check_footprints(footprint)
    lat = np.asarray(lat, dtype=np.float64)
    scale = np.cos(np.radians(lat))[:, None]
    dy = (fp[:, :, 0] - lat[:, None]) * _M_PER_DEG
    dx = (fp[:, :, 1] - np.asarray(lon, dtype=np.float64)[:, None]) * _M_PER_DEG * scale
    r = np.hypot(dx, dy).max(axis=1)
    return np.where(np.isfinite(r), r, 0.0)
