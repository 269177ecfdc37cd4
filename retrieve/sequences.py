"""Whole flights localized jointly: Viterbi over each frame's top-K tiles (``retrieve.locate.sequence=hmm``).

A flight is a sequence of frames (positions' ``sequence``: a UAV-VisLoc region, a folder), ordered by
``time`` when every frame of it has one, else by name. The hidden state of frame ``t`` is one of its K
retrieved tiles; the path maximises the sum of the emission log-probabilities, the log-softmax of the
frame's K retrieval scores divided by ``retrieve.locate.temperature``, plus the transitions' log
weights. The motion prior: frame ``t``'s tile ``j`` may follow frame ``t-1``'s tile ``i`` only when
their centres are ``d`` ≤ ``reach`` apart, with

    reach = max_speed_mps × Δt + r_i + r_j,

and such a move has log weight ``-d / reach`` (in [-1, 0]: shorter moves are preferred, by at most
one unit, so the scores decide unless they nearly tie; the temperature sets that balance). ``r`` is
each tile's radius (centre to farthest corner). The radii make the bound exact for
tiles: two tiles that contain positions ``p`` and ``p'`` have centres at most ``|p - p'| + r_i + r_j``
apart, so the true tiles are never ruled out, however coarse the tile grid. ``Δt`` is the difference of
the frames' ``time`` when both have one, else ``dataset.frame_interval_s``.

When no tile of frame ``t`` is reachable from any tile of frame ``t-1`` (the flight jumped, or the
retrieval lost it) the chain breaks there: frame ``t`` starts a new segment, which keeps one bad
stretch from dragging the rest of the flight.

Cost: O(frames × K²) time and O(frames × K) memory (the back-pointers); the K × K transition masks
are computed for blocks of steps at once with numpy, and the recursion is a few vectorized numpy
calls per step. No frames × gallery matrix is formed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cvgl.core.errors import UserError
from cvgl.retrieve.geo import haversine_m

SEQUENCE_MODES = ("none", "hmm")
# Steps whose K × K masks are computed at once (bounds the scratch memory to ~a few MB per block).
_BLOCK_STEPS = 256


def emission_logp(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Log-softmax over each frame's K scores divided by ``temperature`` ([F, K] float64)."""
    if not temperature > 0:
        raise UserError(f"retrieve.locate.temperature must be a positive number, got {temperature}; e.g. 0.02")
    z = np.asarray(scores, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def transition_logp(
    lat: np.ndarray, lon: np.ndarray, radius: np.ndarray, dt: np.ndarray, max_speed: float, t0: int, t1: int
) -> np.ndarray:
    """``[t1 - t0, K, K]`` log transition weight of frame t's tile j after frame t-1's tile i (t in t0+1 .. t1):
    ``-d / reach`` when the centres are ``d <= reach`` apart, else ``-inf`` (not allowed)."""
    a_lat, a_lon, a_r = lat[t0:t1, :, None], lon[t0:t1, :, None], radius[t0:t1, :, None]
    b_lat, b_lon, b_r = lat[t0 + 1 : t1 + 1, None, :], lon[t0 + 1 : t1 + 1, None, :], radius[t0 + 1 : t1 + 1, None, :]
    reach = max_speed * dt[t0:t1, None, None] + a_r + b_r
    d = haversine_m(a_lat, a_lon, b_lat, b_lon)
    # -d / reach in [-1, 0] where allowed: of two feasible moves the shorter is preferred, by at most
    # one unit of log-probability, so the scores decide unless they are nearly tied.
    return np.where(d <= reach, -d / np.maximum(reach, 1e-9), -np.inf)


def viterbi(
    lat: np.ndarray,
    lon: np.ndarray,
    scores: np.ndarray,
    dt: np.ndarray,
    *,
    max_speed: float,
    temperature: float,
    radius: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The most probable tile of each frame of one flight.

    ``lat``/``lon``/``scores``/``radius``: ``[F, K]`` centre, score and radius (metres) of each frame's
    candidates; ``dt``: ``[F - 1]`` seconds between consecutive frames. Returns ``(choice [F]`` column
    index into the K candidates, ``breaks [F]`` bool: frame t starts a new segment; frame 0 does).
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    f, k = lat.shape
    if f == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    radius = np.zeros((f, k)) if radius is None else np.asarray(radius, dtype=np.float64)
    dt = np.asarray(dt, dtype=np.float64).reshape(-1)
    if dt.shape[0] != f - 1:
        raise UserError(f"{f} frames need {f - 1} time steps, got {dt.shape[0]}")
    if not max_speed > 0:
        raise UserError(f"retrieve.locate.max_speed_mps must be a positive number, got {max_speed}; e.g. 30")
    emis = emission_logp(scores, temperature)
    back = np.zeros((f, k), dtype=np.int32)
    breaks = np.zeros(f, dtype=bool)
    breaks[0] = True
    delta = emis[0].copy()
    for b0 in range(0, f - 1, _BLOCK_STEPS):
        b1 = min(f - 1, b0 + _BLOCK_STEPS)
        trans = transition_logp(lat, lon, radius, dt, max_speed, b0, b1)
        for s in range(b1 - b0):
            t = b0 + s + 1
            cand = delta[:, None] + trans[s]  # [i, j]
            best_i = cand.argmax(axis=0)
            best = cand[best_i, np.arange(k)]
            if not np.isfinite(best).any():
                # Nothing of frame t is reachable: a new segment starts here; its predecessor is the
                # previous segment's best end.
                breaks[t] = True
                back[t] = int(delta.argmax())
                delta = emis[t].copy()
            else:
                back[t] = best_i
                delta = best + emis[t]
    choice = np.zeros(f, dtype=np.int64)
    choice[-1] = int(np.argmax(delta))
    for t in range(f - 1, 0, -1):
        choice[t - 1] = back[t, choice[t]]
    return choice, breaks


def flight_order(sequence: Sequence[str], time: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
    """Row indices of each flight, in flight order: by ``time`` when all its frames have one, else by name.

    Flights are listed in order of their first row.
    """
    time = np.asarray(time, dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sequence):
        groups.setdefault(str(s), []).append(i)
    out = []
    for rows in groups.values():
        r = np.asarray(rows, dtype=np.int64)
        if np.isfinite(time[r]).all():
            r = r[np.lexsort((np.asarray([names[i] for i in r]), time[r]))]
        else:
            r = r[np.argsort(np.asarray([names[i] for i in r]), kind="stable")]
        out.append(r)
    return out


def step_seconds(time: np.ndarray, frame_interval_s: float | None, flight: str) -> np.ndarray:
    """Seconds between consecutive frames of one flight (rows in flight order)."""
    t = np.asarray(time, dtype=np.float64)
    dt = np.diff(t)
    missing = ~np.isfinite(dt)
    if missing.any():
        if frame_interval_s is None:
            raise UserError(
                f"flight {flight!r} has frames without a time, so retrieve.locate.sequence=hmm cannot tell how "
                "far the drone moved between them; set dataset.frame_interval_s=SECONDS (or give times in "
                "the positions)"
            )
        dt[missing] = float(frame_interval_s)
    if (dt < 0).any():
        raise UserError(f"flight {flight!r} has frame times going backwards; fix the positions' time column")
    return dt


def smooth_flights(
    topk: np.ndarray,
    topk_scores: np.ndarray,
    tile_lat: np.ndarray,
    tile_lon: np.ndarray,
    tile_radius: np.ndarray,
    sequence: Sequence[str],
    time: np.ndarray,
    names: Sequence[str],
    *,
    k: int,
    max_speed: float,
    temperature: float,
    frame_interval_s: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smoothed (lat, lon) of every frame and the chosen tile row, flight by flight, over the top ``k``."""
    top = np.asarray(topk, dtype=np.int64)
    if k < 1 or k > top.shape[1]:
        raise UserError(
            f"retrieve.locate.k={k} but the top lists hold {top.shape[1]} tiles; set retrieve.locate.k between "
            f"1 and {top.shape[1]} (or raise retrieve.topk)"
        )
    top = top[:, :k]
    sc = np.asarray(topk_scores, dtype=np.float64)[:, :k]
    chosen = np.zeros(top.shape[0], dtype=np.int64)
    for rows in flight_order(sequence, time, names):
        dt = step_seconds(np.asarray(time, dtype=np.float64)[rows], frame_interval_s, str(sequence[rows[0]]))
        cand = top[rows]
        pick, _ = viterbi(
            tile_lat[cand], tile_lon[cand], sc[rows], dt,
            max_speed=max_speed, temperature=temperature, radius=tile_radius[cand],
        )
        chosen[rows] = cand[np.arange(rows.size), pick]
    return tile_lat[chosen].astype(np.float64), tile_lon[chosen].astype(np.float64), chosen
