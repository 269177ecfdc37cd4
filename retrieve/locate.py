"""Where each frame was taken, from its top-K tiles, and the metrics of ``protocol=map``.

Estimated position (``retrieve.locate.method``):

* ``top1`` -- the centre of the best-scoring tile;
* ``weighted`` -- the mean of the top ``retrieve.locate.k`` tile centres weighted by the softmax of
  their scores divided by ``retrieve.locate.temperature``. Centres are averaged as unit vectors on the
  sphere (then turned back into lat/lon), which is the plain weighted mean over a map's extent and
  stays right across the antimeridian.

Metrics (percent where a share), over the frames that have a true position inside some map:

* ``R@K`` -- share of frames with a footprint positive (:mod:`retrieve.footprints`) among their top K
  tiles. The top-K lists are exact (the metrics pass), so this equals "the first positive's rank < K";
  ties at the K-th place are unspecified, as for every protocol.
* ``dist_m_mean`` / ``dist_m_median`` -- haversine metres from the estimated to the true position.
* ``MA@<m>m`` -- share of frames whose estimate lies strictly closer than ``m`` metres (DenseUAV's MA,
  applied to the estimate instead of the top-1 item).
* ``SDM@K`` -- DenseUAV's SDM over the top-K tile centres (:func:`retrieve.geo.sdm_per_query`); not
  reported for K larger than the gallery (R@K then saturates, as under the other protocols).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError
from cvgl.retrieve.geo import haversine_m, sdm_per_query

LOCATE_METHODS = ("top1", "weighted")


def softmax_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Row-wise softmax of ``scores / temperature`` (float64, rows sum to 1)."""
    if not temperature > 0:
        raise UserError(f"retrieve.locate.temperature must be a positive number, got {temperature}; e.g. 0.02")
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def _to_xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


def _from_xyz(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def locate(
    topk: np.ndarray,
    topk_scores: np.ndarray,
    tile_lat: np.ndarray,
    tile_lon: np.ndarray,
    *,
    method: str = "top1",
    k: int = 5,
    temperature: float = 0.02,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimated (lat, lon) of every frame from its top-K tile rows (best first) and their scores."""
    if method not in LOCATE_METHODS:
        raise UserError(f"retrieve.locate.method={method!r} is not one of {', '.join(LOCATE_METHODS)}")
    top = np.asarray(topk, dtype=np.int64)
    if top.ndim != 2 or top.shape[1] < 1:
        raise UserError(f"top lists must be [frames, K >= 1], got shape {top.shape}")
    if method == "top1":
        return tile_lat[top[:, 0]].astype(np.float64), tile_lon[top[:, 0]].astype(np.float64)
    if k < 1 or k > top.shape[1]:
        raise UserError(
            f"retrieve.locate.k={k} but the top lists hold {top.shape[1]} tiles; set retrieve.locate.k between "
            f"1 and {top.shape[1]} (or raise retrieve.topk)"
        )
    rows = top[:, :k]
    w = softmax_weights(np.asarray(topk_scores)[:, :k], temperature)
    xyz = (_to_xyz(tile_lat[rows], tile_lon[rows]) * w[..., None]).sum(axis=1)
    return _from_xyz(xyz)


def recall_by_footprint(
    topk: np.ndarray, indptr: np.ndarray, positives: np.ndarray, ks: Sequence[int]
) -> tuple[dict[str, float], np.ndarray]:
    """(``R@K`` over all given frames, per-frame first positive rank in the list or -1)."""
    top = np.asarray(topk, dtype=np.int64)
    n = top.shape[0]
    first = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        pos = positives[indptr[i] : indptr[i + 1]]
        if pos.size:
            hit = np.flatnonzero(np.isin(top[i], pos))
            if hit.size:
                first[i] = int(hit[0])
    found = first >= 0
    out = {f"R@{k}": 100.0 * float(np.mean(found & (first < int(k)))) if n else float("nan") for k in ks}
    return out, first


def distance_metrics(
    est_lat: np.ndarray, est_lon: np.ndarray, true_lat: np.ndarray, true_lon: np.ndarray, ma_metres: Sequence[float]
) -> tuple[dict[str, float], np.ndarray]:
    """(``dist_m_mean``, ``dist_m_median`` and ``MA@<m>m`` (percent), per-frame error in metres)."""
    err = haversine_m(est_lat, est_lon, true_lat, true_lon)
    out: dict[str, float] = {}
    if err.size == 0:
        return out, err
    for m in ma_metres:
        out[f"MA@{m:g}m"] = 100.0 * float(np.mean(err < m))
    out["dist_m_mean"] = float(np.mean(err))
    out["dist_m_median"] = float(np.median(err))
    return out, err


@dataclass
class MapEvaluation:
    """Per-frame outcome of ``protocol=map`` (frames in entry order)."""

    est_lat: np.ndarray
    est_lon: np.ndarray
    error_m: np.ndarray  # NaN for frames without truth or outside every map
    first_rank: np.ndarray  # first footprint positive in the top list, -1 if none
    counted: np.ndarray  # bool: the frame adds to the metrics
    n_outside: int  # frames with a true position outside every tile


def map_metrics(
    topk: np.ndarray,
    topk_scores: np.ndarray,
    tile_lat: np.ndarray,
    tile_lon: np.ndarray,
    footprint: np.ndarray,
    true_lat: np.ndarray,
    true_lon: np.ndarray,
    *,
    ks: Sequence[int],
    ma_metres: Sequence[float],
    sdm_scale: float,
    method: str = "top1",
    k: int = 5,
    temperature: float = 0.02,
    est: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, float], MapEvaluation]:
    """The metrics of ``protocol=map`` and each frame's estimate; ``est`` replaces the estimate (smoothed)."""
    from cvgl.retrieve.footprints import footprint_positives

    top = np.asarray(topk, dtype=np.int64)
    if est is None:
        est = locate(top, topk_scores, tile_lat, tile_lon, method=method, k=k, temperature=temperature)
    true_lat = np.asarray(true_lat, dtype=np.float64)
    true_lon = np.asarray(true_lon, dtype=np.float64)
    known = np.isfinite(true_lat) & np.isfinite(true_lon)
    indptr, positives = footprint_positives(true_lat, true_lon, footprint)
    has_pos = np.diff(indptr) > 0
    counted = known & has_pos
    n_outside = int(np.count_nonzero(known & ~has_pos))
    idx = np.flatnonzero(counted)
    out: dict[str, float] = {"n_located": int(top.shape[0]), "n_with_truth": int(np.count_nonzero(known))}
    out["n_outside_maps"] = n_outside
    out["n_evaluated"] = int(idx.size)
    rec, first_sub = recall_by_footprint(
        top[idx], _sub_indptr(indptr, idx), _sub_positives(indptr, positives, idx), ks
    )
    first = np.full(top.shape[0], -1, dtype=np.int64)
    first[idx] = first_sub
    error = np.full(top.shape[0], np.nan)
    known_idx = np.flatnonzero(known)
    error[known_idx] = haversine_m(est[0][known_idx], est[1][known_idx], true_lat[known_idx], true_lon[known_idx])
    if idx.size:
        out.update(rec)
        dist, _ = distance_metrics(est[0][idx], est[1][idx], true_lat[idx], true_lon[idx], ma_metres)
        out.update(dist)
        q_pos = np.stack([true_lon[idx], true_lat[idx]], 1)
        g_pos = np.stack([tile_lon, tile_lat], 1)
        for kk in ks:
            if int(kk) > top.shape[1]:
                continue  # more than the gallery holds (R@K saturates; SDM@K is not defined)
            out[f"SDM@{kk}"] = 100.0 * float(np.mean(sdm_per_query(q_pos, g_pos, top[idx], int(kk), sdm_scale)))
    return out, MapEvaluation(est[0], est[1], error, first, counted, n_outside)


def _sub_indptr(indptr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    counts = indptr[idx + 1] - indptr[idx]
    out = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _sub_positives(indptr: np.ndarray, positives: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([positives[indptr[i] : indptr[i + 1]] for i in idx])


def outside_warning(n_outside: int, n_with_truth: int) -> str | None:
    """The warning (shown as one ``warning:`` line) for frames whose true position lies outside every map."""
    if n_outside == 0:
        return None
    return (
        f"{n_outside} of {n_with_truth} frames with a true position lie outside every map tile; "
        "they are located but left out of the metrics (check dataset.query_positions or add the map covering them)"
    )


def write_locations(
    path: Path,
    names: Sequence[str],
    est_lat: np.ndarray,
    est_lon: np.ndarray,
    score: np.ndarray,
    error_m: np.ndarray,
    topk: np.ndarray,
    tile_names: Sequence[str],
    seq: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """``locations.csv``: ``name,lat,lon,score,error_m[,seq_lat,seq_lon,seq_error_m],topk`` (``topk`` =
    the top-K tile names, space-separated, best first; errors empty without truth)."""

    def num(v: float, fmt: str) -> str:
        return "" if not math.isfinite(float(v)) else format(float(v), fmt)

    header = ["name", "lat", "lon", "score", "error_m"]
    if seq is not None:
        header += ["seq_lat", "seq_lon", "seq_error_m"]
    header.append("topk")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i, name in enumerate(names):
            row = [name, num(est_lat[i], ".8f"), num(est_lon[i], ".8f"), num(score[i], ".6f"), num(error_m[i], ".3f")]
            if seq is not None:
                row += [num(seq[0][i], ".8f"), num(seq[1][i], ".8f"), num(seq[2][i], ".3f")]
            row.append(" ".join(tile_names[j] for j in topk[i] if j >= 0))
            w.writerow(row)
