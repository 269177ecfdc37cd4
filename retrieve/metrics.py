"""Exact retrieval metrics (R@K, R@1%, AP) under each paper's own protocol.

Protocols (the README's "Metric protocols" table says where each definition comes from):

* ``u1652`` -- the University-1652 baseline (``evaluate_gpu.py``): gallery items labelled -1 are junk and
  are removed from every ranking; a query's positives are the gallery items with its label; CMC[k] = 1
  from the first positive's rank on; AP is the trapezoidal rule
  ``sum_i (1/n_pos) * ((i / r_i, or 1 when r_i = 0) + (i + 1) / (r_i + 1)) / 2`` over the positives
  (``i`` their 0-based order, ``r_i`` their 0-based rank); R@1% = CMC[round(0.01 * G)].
* ``geoalign`` -- as ``u1652`` but AP = mean over positives of ``(i + 1) / (r_i + 1)``.
* ``cvft`` -- one-to-one pairs: query i's true match is gallery i; its rank is the number of gallery items
  with a strictly smaller distance ``2 - 2 * score``; R@K = share of queries with rank < K;
  R@1% = share with rank < int(0.01 * G). Labels do not define matches (no junk) and there is no AP;
  where both sides carry pair ids (labels >= 0), row i must hold the same id on both, else it is an error.
* ``vigor`` -- Sample4Geo's ``evaluate/vigor.py`` (``calculate_scores``): each ground query has one
  positive satellite (the gallery item with its label); its rank is the number of gallery items scoring
  strictly higher; R@K = share of queries with rank < K; R@1% = share with rank < G // 100 (floor);
  ``hit_rate`` = share of queries where nothing but the query's three semi-positives (``semi_positives``,
  gallery labels) scores strictly higher than the positive. No AP. Junk (-1) is removed as under
  ``u1652``; VIGOR galleries have none. With several positives the best one is used.
* ``map`` -- georeferenced map tiles: a tile is a positive of a frame when the frame's true position
  lies inside the tile's footprint (labels play no part). The exact top-K lists come from
  :func:`topk_lists`; R@K, metres, MA and SDM from them in :mod:`retrieve.locate`.

* ``vpr`` -- VPR-methods-evaluation's ``main.py``: a query's positives are the gallery items within a
  radius of it (``positives``: per query, the gallery rows, as ``radius_neighbors`` gives them); R@N =
  share of queries with a positive among the first N predictions, i.e. first positive's rank < N. Labels
  are not read (no junk); no AP and no R@1%. Its ranking is by L2 distance on the raw descriptors:
  ``metric="l2"``.

Under every protocol a query without any positive counts in the denominator but adds nothing, all
averages divide by the number of queries, ``G`` is the number of gallery items as given (junk included,
as the baseline's ``len(gallery_label)``), and results are percentages. R@k for k larger than the
gallery saturates (as in GeoAlign's evaluation) instead of failing.

Scores are inner products ``query @ gallery.T`` (descriptors are usually L2-normalised, but nothing here
relies on it), or with ``metric="l2"`` minus squared Euclidean distances ``2 q.g - |q|^2 - |g|^2``
(the decomposition FAISS's exact L2 search uses), so "greater score" is always "better". The rank of a positive is the number of non-junk gallery items with a strictly greater
score, with two tie rules: a negative whose score *equals* the positive's does not count (ties go in
the query's favour), and positives with equal scores take consecutive ranks. On tie-free data this is
exactly the reference's full-sort ranking; on ties the reference's order is arbitrary (argsort), so no
rule can match it there. Under ``cvft`` "strictly smaller distance" is the same as "strictly greater
score" because ``2 - 2s`` is strictly decreasing in ``s``. A query with a negative label has no positives:
-1 (junk is never a match; the baseline script would crash on it) or -2 (a distractor, which matches
nothing; gallery distractors are ranked as ordinary negatives). The top-K list excludes junk, is ordered by score
and then by gallery row; which of several items tied at the K-th place makes the list is unspecified.

How it is computed (no per-query sort, and the gallery never needs to be in memory at once):
queries are processed in blocks whose score matrix is about 256 MB; each block's scores against a
gallery chunk come from one matmul (torch, on CPU or CUDA); for every positive we *count* the gallery
items with a greater score rather than sorting the row, and a running top-K keeps the best items.
``evaluate_streaming`` takes the gallery as chunks (e.g. cache shards); ``evaluate_scores`` takes a
precomputed score matrix instead (e.g. minus k-reciprocal re-ranked distances) and ranks it the same way. With a single chunk everything
happens in one pass and every score, positive or not, comes from the same matmul. With several chunks a
first pass computes the positives' scores (one dot product per query/positive pair, cheap) and a second
pass streams the chunks again, counting and ranking; there the positives' scores come from a different
float32 summation than the matmul, so only items within ~1e-7 of a positive's score (near-exact ties)
can be ranked differently from the single-chunk path. Working memory is about the score block plus
~200 MB of reused scratch buffers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError

# The rank/AP protocols (u1652's full-ranking family), and every protocol including Sample4Geo's
# VIGOR evaluation, which reports a hit rate instead of AP.
PROTOCOLS = ("u1652", "geoalign", "cvft")
ALL_PROTOCOLS = (*PROTOCOLS, "vigor", "vpr")
# Protocols whose positives come from positions, not labels (retrieve/locate.py computes their metrics).
POSITION_PROTOCOLS = ("map",)
# Protocols whose positives are not defined by labels (no junk either): pairs by row, positions.
_LABEL_FREE = ("cvft", "vpr")
# Scores: inner product (cosine on unit rows), or minus the squared Euclidean distance.
METRICS = ("ip", "l2")
JUNK_LABEL = -1

# Target size of one block's score matrix (float32 queries x gallery-chunk items).
BLOCK_BYTES = 256 * 2**20
# Up to this many positives per query, counting is a direct comparison of the score block against each
# positive's score (one vectorised pass per positive, no extra memory); above it the bucketed counter
# below (a fixed ~8 passes, independent of the number of positives) is faster.
_DIRECT_MAX_POSITIVES = 3
# Bucketed counter: about this many gallery items per bucket (smaller = larger tables, fewer exact checks).
_ITEMS_PER_BUCKET = 4


@dataclass
class QueryResults:
    """Per-query outcome of an evaluation (queries in the order given)."""

    first_rank: np.ndarray  # int64 [n_q]: 0-based rank of the first positive, -1 if the query has none
    ap: np.ndarray  # float64 [n_q]: average precision (0 without positives, NaN under cvft)
    topk: np.ndarray  # int64 [n_q, K]: gallery row indices (junk excluded), best first
    topk_scores: np.ndarray  # float32 [n_q, K]: their scores
    n_positives: np.ndarray  # int64 [n_q]: number of positives in the gallery
    # vigor: bool [n_q], no gallery item but the query's semi-positives scores above its positive
    hit: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------
# Public API


def evaluate(
    query: np.ndarray,
    query_labels: np.ndarray | None,
    gallery: np.ndarray,
    gallery_labels: np.ndarray | None,
    protocol: str,
    *,
    ks: Sequence[int] = (1, 5, 10),
    topk: int = 10,
    device: str | torch.device = "cpu",
    block_size: int | None = None,
    semi_positives: np.ndarray | None = None,
    metric: str = "ip",
    positives: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, Any], QueryResults]:
    """Evaluate in-memory query and gallery descriptors; returns (metrics in percent, per-query results)."""
    return evaluate_streaming(
        query,
        query_labels,
        lambda: iter([(gallery, gallery_labels)]),
        protocol,
        ks=ks,
        topk=topk,
        device=device,
        block_size=block_size,
        semi_positives=semi_positives,
        metric=metric,
        positives=positives,
    )


def evaluate_streaming(
    query: np.ndarray,
    query_labels: np.ndarray | None,
    gallery_chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None]]],
    protocol: str,
    *,
    ks: Sequence[int] = (1, 5, 10),
    topk: int = 10,
    device: str | torch.device = "cpu",
    block_size: int | None = None,
    semi_positives: np.ndarray | None = None,
    metric: str = "ip",
    positives: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, Any], QueryResults]:
    """Evaluate against a gallery given as chunks ``(descriptors [n_i, d], labels [n_i])``, in row order.

    ``gallery_chunks`` is called once or twice and must return a fresh iterator over the same chunks
    each time (labels may be None under ``cvft``). Only one chunk (two while the first is peeked at)
    is held in memory at a time. ``block_size`` = queries per block (default: a ~256 MB score block).
    ``semi_positives`` (``vigor`` only): int64 ``[n_q, m]`` gallery labels of each query's semi-positives,
    -1 for none; without them ``hit_rate`` equals R@1. ``metric``: ``ip`` (inner product) or ``l2``
    (Euclidean distance on the descriptors as given). ``positives`` (``vpr`` only): per query, an int
    array of its positive gallery rows.
    """
    protocol = _check_protocol(protocol)
    ks = _check_ks(ks)
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise UserError(f"topk must be a positive integer, got {topk!r}; set topk to e.g. 10")
    if block_size is not None and (not isinstance(block_size, (int, np.integer)) or block_size < 1):
        raise UserError(f"block_size must be a positive integer or None, got {block_size!r}")
    q = _as_descriptors(query, "query")
    ql = _as_labels(query_labels, q.shape[0], "query", protocol)
    dev = resolve_device(device, "device", cuda_fallback=True)

    first_iter = iter(gallery_chunks())
    first = next(first_iter, None)
    if first is None:
        raise UserError("the gallery is empty (no chunks): point the evaluation at a non-empty gallery")
    second = next(first_iter, None)
    ev = _Evaluation(q, ql, protocol, int(topk), dev, block_size)
    ev.set_semi_positives(semi_positives)
    ev.set_metric(metric)
    ev.set_row_positives(positives)
    with torch.inference_mode():
        if second is None:
            # One chunk: a single pass, thresholds taken from the very score blocks that are counted.
            chunk = ev.read_chunk(first, 0, 0)
            ev.finish_scan()
            ev.plan(chunk.n_kept, from_scores=True)
            ev.process(chunk, thresholds_from_scores=True)
        else:
            # Pass 1: labels, sizes and validation of every chunk, plus the positives' scores.
            offset = 0
            max_kept = 0
            for i, item in enumerate(chain([first, second], first_iter)):
                chunk = ev.read_chunk(item, i, offset)
                ev.gather_positive_scores(chunk)
                offset += chunk.n_rows
                max_kept = max(max_kept, chunk.n_kept)
                del chunk
            ev.finish_scan()
            ev.plan(max_kept, from_scores=False)
            # Pass 2: stream the chunks again, counting and ranking against the fixed thresholds.
            offset = 0
            n_seen = 0
            for i, item in enumerate(gallery_chunks()):
                chunk = ev.read_chunk(item, i, offset, second_pass=True)
                ev.process(chunk, thresholds_from_scores=False)
                offset += chunk.n_rows
                n_seen += 1
                del chunk
            if n_seen != len(ev.chunk_labels):
                raise UserError(
                    f"gallery_chunks() gave {len(ev.chunk_labels)} chunks on the first pass but {n_seen} on "
                    "the second; it must return a fresh iterator over the same chunks each time it is called"
                )
        results = ev.results()
    return summarize(results, protocol, ev.n_gallery, ks), results


def evaluate_scores(
    scores: np.ndarray,
    query_labels: np.ndarray | None,
    gallery_labels: np.ndarray | None,
    protocol: str,
    *,
    ks: Sequence[int] = (1, 5, 10),
    topk: int = 10,
    device: str | torch.device = "cpu",
    block_size: int | None = None,
    semi_positives: np.ndarray | None = None,
) -> tuple[dict[str, Any], QueryResults]:
    """Evaluate a precomputed score matrix ``[n_q, n_g]`` (higher = better; e.g. minus a re-ranked distance).

    The same counting, tie rules and top-K as :func:`evaluate`, with the score blocks sliced from
    ``scores`` instead of computed by a matmul; for small galleries (the matrix is held in memory).
    """
    protocol = _check_protocol(protocol)
    ks = _check_ks(ks)
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise UserError(f"topk must be a positive integer, got {topk!r}; set topk to e.g. 10")
    s = _as_descriptors(scores, "score matrix")
    n_q, n_g = s.shape
    ql = _as_labels(query_labels, n_q, "query", protocol)
    dev = resolve_device(device, "device", cuda_fallback=True)
    # Stand-in descriptors of dimension 0: everything but the scores is the ordinary evaluation.
    ev = _ScoreEvaluation(s, np.zeros((n_q, 0), np.float32), ql, protocol, int(topk), dev, block_size)
    ev.set_semi_positives(semi_positives)
    with torch.inference_mode():
        chunk = ev.read_chunk((np.zeros((n_g, 0), np.float32), gallery_labels), 0, 0)
        ev.finish_scan()
        ev.plan(chunk.n_kept, from_scores=True)
        ev.process(chunk, thresholds_from_scores=True)
        results = ev.results()
    return summarize(results, protocol, ev.n_gallery, ks), results


def topk_lists(
    query: np.ndarray,
    gallery_chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray | None]]],
    *,
    topk: int,
    device: str | torch.device = "cpu",
) -> QueryResults:
    """Exact top-K lists (rows and scores, best first) of every query over the whole streamed gallery.

    The same pass as :func:`evaluate_streaming` with no positives (every query a distractor, no gallery
    item junk): what ``protocol=map`` ranks by, whose positives are footprints, not labels.
    """
    n_q = np.asarray(query).shape[0]

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for desc, _ in gallery_chunks():
            yield desc, np.zeros(desc.shape[0], dtype=np.int64)

    _, results = evaluate_streaming(
        query, np.full(n_q, -2, dtype=np.int64), chunks, "u1652", ks=(1,), topk=topk, device=device
    )
    return results


def summarize(results: QueryResults, protocol: str, n_gallery: int, ks: Sequence[int]) -> dict[str, Any]:
    """Aggregate per-query results into the protocol's metrics (percent; no "AP" under cvft)."""
    protocol = _check_protocol(protocol)
    ks = _check_ks(ks)
    first = np.asarray(results.first_rank, dtype=np.int64)
    n_q = first.shape[0]
    if n_q == 0:
        raise UserError("no queries to summarize: the query set is empty")
    if n_gallery < 1:
        raise UserError(f"n_gallery must be positive, got {n_gallery}")
    found = first >= 0
    out: dict[str, Any] = {"protocol": protocol, "n_queries": int(n_q), "n_gallery": int(n_gallery)}
    for k in ks:
        out[f"R@{k}"] = 100.0 * float(np.count_nonzero(found & (first < k))) / n_q
    if protocol == "vigor":
        # Sample4Geo appends R // 100 to its ranks and counts ranking < k.
        out["R@1%"] = 100.0 * float(np.count_nonzero(found & (first < n_gallery // 100))) / n_q
        hit = results.hit if results.hit is not None else (first == 0)
        out["hit_rate"] = 100.0 * float(np.count_nonzero(found & np.asarray(hit, dtype=bool))) / n_q
        return out
    if protocol == "vpr":
        return out  # main.py reports R@N only
    if protocol == "cvft":
        # CVFT's validate(dist, top_k=int(0.01 * N)) counts rank < int(0.01 * N).
        out["R@1%"] = 100.0 * float(np.count_nonzero(found & (first < int(0.01 * n_gallery)))) / n_q
    else:
        # The baseline reads CMC[round(len(gallery_label) * 0.01)] (Python's round: half to even).
        out["R@1%"] = 100.0 * float(np.count_nonzero(found & (first <= round(n_gallery * 0.01)))) / n_q
        ap = np.asarray(results.ap, dtype=np.float64)
        out["AP"] = 100.0 * float(np.sum(np.where(found, ap, 0.0))) / n_q
    return out


# --------------------------------------------------------------------------------------------------------
# Validation helpers


def _check_protocol(protocol: str) -> str:
    if protocol not in ALL_PROTOCOLS:
        raise UserError(f"unknown metric protocol {protocol!r}; choose one of {', '.join(ALL_PROTOCOLS)}")
    return protocol


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise UserError(f"ks must be a list of positive integers, got {ks!r}") from None
    if not out or any(k < 1 for k in out):
        raise UserError(f"ks must be a non-empty list of positive integers, got {ks!r}")
    return out


def _as_descriptors(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite float32 C-contiguous [n, d] array, or raise UserError."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything that is not array-like is the user's input
        raise UserError(f"{what} descriptors are not an array ({e}); pass a [n, dim] float array") from None
    if a.ndim != 2:
        raise UserError(f"{what} descriptors must be a 2-D array [n, dim], got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UserError(f"{what} descriptors have dtype {a.dtype}; pass float descriptors")
    if a.shape[0] == 0:
        raise UserError(f"the {what} set is empty (0 descriptors); check its image list or cache entry")
    if dim is not None and a.shape[1] != dim:
        raise UserError(
            f"{what} descriptors have dimension {a.shape[1]} but the queries have {dim}; "
            "extract both with the same backbone, layer and pooling"
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    # A row sum is NaN/inf whenever the row holds one (and, rarely, when finite values overflow), so
    # only rows with a non-finite sum need the exact check: one pass, no [n, d] temporary.
    suspects = np.flatnonzero(~np.isfinite(a.sum(axis=1)))
    if suspects.size:
        bad = suspects[~np.isfinite(a[suspects]).all(axis=1)]
        if bad.size:
            raise UserError(
                f"{what} descriptors contain NaN or inf ({bad.size} rows, first row {int(bad[0])}); "
                "re-extract them or check the cache entry"
            )
    return a


def _as_labels(labels: Any, n: int, what: str, protocol: str) -> np.ndarray | None:
    """Return labels as int64 [n] (None allowed under cvft, which ignores them)."""
    if labels is None:
        if protocol in _LABEL_FREE:
            return None
        raise UserError(f"{what} labels are missing; protocol {protocol!r} needs a label per {what} item")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    a = np.asarray(labels)
    if a.ndim != 1 or a.shape[0] != n:
        raise UserError(
            f"{what} labels have shape {a.shape} but there are {n} {what} descriptors; give one label each"
        )
    if not np.issubdtype(a.dtype, np.integer):
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise UserError(f"{what} labels have dtype {a.dtype}; labels must be integers (-1 = junk)")
    return a.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------------
# The evaluation state


@dataclass
class _Chunk:
    """One gallery chunk, junk rows dropped (they are in no ranking)."""

    desc: np.ndarray  # float32 [n_kept, d]
    rows: np.ndarray  # int64 [n_kept]: global gallery row of each kept item
    labels: np.ndarray | None  # int64 [n_kept]
    n_rows: int  # rows in the chunk as given, junk included
    offset: int  # global row of the chunk's first row
    pair_q: np.ndarray | None = None  # int64: query index of each positive pair in the chunk, sorted
    pair_col: np.ndarray | None = None  # int64: its kept-column index
    semi_q: np.ndarray | None = None  # vigor: query index of each semi-positive pair in the chunk
    semi_col: np.ndarray | None = None  # int64: its kept-column index

    @property
    def n_kept(self) -> int:
        return int(self.desc.shape[0])


@dataclass
class _Block:
    """A block of queries (contiguous in the internal order) and their per-positive counters."""

    start: int
    stop: int
    n_pos: np.ndarray  # int64 [b]
    n_pos_dev: torch.Tensor  # the same on the device
    thresholds: torch.Tensor | None = None  # float32 [b, P] ascending positive scores, +inf padded
    keys: torch.Tensor | None = None  # int64 [b * P] row-major sortable keys of the thresholds
    greater: torch.Tensor | None = None  # int64 [b, P] items with a greater score
    pos_greater: torch.Tensor | None = None  # int64 [b, P] positives with a greater score
    top_v: torch.Tensor | None = None  # float32 [b, K], None until the first chunk
    top_i: torch.Tensor | None = None  # int64 [b, K]
    semi_above: torch.Tensor | None = None  # vigor: int64 [b] semi-positives scoring above the best positive

    @property
    def max_pos(self) -> int:
        return int(self.n_pos.max()) if self.n_pos.size else 0


class _Evaluation:
    """Holds queries, per-query positives and the running counters of one evaluation."""

    # vigor: semi-positive (label, query) pairs sorted by label; None for every other protocol.
    _semi_lab: np.ndarray | None = None
    _semi_q: np.ndarray | None = None
    # vpr: positive (gallery row, query) pairs sorted by row; None for every other protocol.
    _row_g: np.ndarray | None = None
    _row_q: np.ndarray | None = None
    metric = "ip"

    def __init__(
        self,
        q: np.ndarray,
        ql: np.ndarray | None,
        protocol: str,
        k: int,
        dev: torch.device,
        block_size: int | None,
    ) -> None:
        self.q = q
        self.ql = ql
        self.protocol = protocol
        self.k = k
        self.dev = dev
        self.block_size = block_size
        self.n_q = q.shape[0]
        self.dim = q.shape[1]
        self.n_gallery = 0
        self.n_kept = 0
        self.chunk_labels: list[np.ndarray | None] = []
        self.chunk_sizes: list[int] = []
        self.n_pos = np.zeros(self.n_q, dtype=np.int64)
        # Two-pass mode: positives' scores as (query, score) pieces, one per chunk.
        self._pos_q: list[np.ndarray] = []
        self._pos_s: list[np.ndarray] = []
        self._q_dev: torch.Tensor | None = None
        self.blocks: list[_Block] = []
        self.work = Workspace()
        if ql is not None:
            # Queries sorted by label, so each chunk finds its positive pairs with two searchsorted calls.
            self._ql_order = np.argsort(ql, kind="stable")
            self._ql_sorted = ql[self._ql_order]

    # ---- reading and validating chunks

    def read_chunk(self, item: Any, index: int, offset: int, second_pass: bool = False) -> _Chunk:
        """Validate one ``(descriptors, labels)`` chunk and drop its junk rows."""
        try:
            desc, labels = item
        except (TypeError, ValueError):
            raise UserError(
                f"gallery chunk {index} is not a (descriptors, labels) pair; yield one tuple per chunk"
            ) from None
        if isinstance(desc, torch.Tensor):
            desc = desc.detach().cpu().numpy()
        desc = np.asarray(desc)
        if desc.ndim == 2 and desc.shape[0] == 0:
            n_rows = 0
        else:
            desc = _as_descriptors(desc, f"gallery (chunk {index})", self.dim)
            n_rows = desc.shape[0]
        lab = _as_labels(labels, n_rows, f"gallery (chunk {index})", self.protocol)
        if second_pass:
            same = index < len(self.chunk_sizes) and self.chunk_sizes[index] == n_rows
            if same and lab is not None and self.chunk_labels[index] is not None:
                same = bool(np.array_equal(lab, self.chunk_labels[index]))
            if not same:
                raise UserError(
                    f"gallery chunk {index} differs between the two passes; gallery_chunks() must return "
                    "a fresh iterator over the same chunks each time it is called"
                )
        else:
            self.chunk_sizes.append(n_rows)
            self.chunk_labels.append(lab)
        rows = np.arange(offset, offset + n_rows, dtype=np.int64)
        if self.protocol == "cvft" and lab is not None and self.ql is not None and not second_pass:
            self._check_cvft_pairs(rows, lab)
        if self.protocol not in _LABEL_FREE and n_rows:
            keep = lab != JUNK_LABEL
            if not keep.all():
                desc, rows, lab = desc[keep], rows[keep], lab[keep]
        if n_rows == 0:
            desc = np.zeros((0, self.dim), dtype=np.float32)
        chunk = _Chunk(desc=desc, rows=rows, labels=lab, n_rows=n_rows, offset=offset)
        chunk.pair_q, chunk.pair_col = self.positive_pairs(chunk)
        if self._semi_lab is not None:
            chunk.semi_q, chunk.semi_col = self.semi_pairs(chunk)
        if not second_pass:
            self.n_gallery += n_rows
            self.n_kept += chunk.n_kept
            self.n_pos += np.bincount(chunk.pair_q, minlength=self.n_q)
        return chunk

    def _check_cvft_pairs(self, rows: np.ndarray, lab: np.ndarray) -> None:
        """Under cvft, row i of both sides must be the same pair: where both sides carry a label (pair
        ids, as the CVUSA/CVACT readers give), they must agree row by row. An image left out on one
        side (``--skip-bad``) shifts every later row and would otherwise score silently wrong pairs."""
        assert self.ql is not None
        inside = rows < self.n_q
        q_lab, g_lab = self.ql[rows[inside]], lab[inside]
        bad = np.flatnonzero((q_lab >= 0) & (g_lab >= 0) & (q_lab != g_lab))
        if bad.size:
            r = int(rows[inside][bad[0]])
            raise UserError(
                f"protocol 'cvft' pairs query i with gallery item i, but row {r} holds pair {int(self.ql[r])} "
                f"on the query side and pair {int(lab[inside][bad[0]])} in the gallery ({bad.size} rows differ in "
                "this chunk; an image left out on one side, e.g. by --skip-bad?); extract both views with the "
                "same images"
            )

    def positive_pairs(self, chunk: _Chunk) -> tuple[np.ndarray, np.ndarray]:
        """(query index, kept-column index) of every positive pair in ``chunk``, sorted by query."""
        if self.protocol == "cvft":
            cols = np.flatnonzero(chunk.rows < self.n_q)
            return chunk.rows[cols], cols
        if self.protocol == "vpr":
            # No junk is dropped under vpr, so a kept column is the row minus the chunk's offset.
            assert self._row_g is not None and self._row_q is not None
            lo, hi = np.searchsorted(self._row_g, [chunk.offset, chunk.offset + chunk.n_rows])
            q_idx, cols = self._row_q[lo:hi], self._row_g[lo:hi] - chunk.offset
            order = np.argsort(q_idx, kind="stable")
            return q_idx[order], cols[order]
        assert self.ql is not None and chunk.labels is not None
        if chunk.n_kept == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        # Gallery labels sorted; each query's positives are one run [lo, hi) in that order.
        g_order = np.argsort(chunk.labels, kind="stable")
        g_sorted = chunk.labels[g_order]
        lo = np.searchsorted(g_sorted, self._ql_sorted, side="left")
        hi = np.searchsorted(g_sorted, self._ql_sorted, side="right")
        # A query with a negative label has no positives: -1 (junk rows are already gone, so its run
        # is empty) and -2 (a distractor; it matches no other distractor).
        cnt = np.where(self._ql_sorted < 0, 0, hi - lo)
        total = int(cnt.sum())
        q_idx = np.repeat(self._ql_order, cnt)
        run_start = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
        cols = g_order[run_start + np.arange(total)]
        order = np.argsort(q_idx, kind="stable")
        return q_idx[order], cols[order]

    def set_semi_positives(self, semi: Any) -> None:
        """``vigor``: each query's semi-positives (gallery labels ``[n_q, m]``, -1 = none) as (query, label)
        pairs sorted by label; labels equal to the query's own (a positive already) are left out."""
        self._semi_q = None
        self._semi_lab = None
        if semi is None or self.protocol != "vigor":
            return
        if isinstance(semi, torch.Tensor):
            semi = semi.detach().cpu().numpy()
        a = np.asarray(semi)
        if a.ndim != 2 or a.shape[0] != self.n_q or not np.issubdtype(a.dtype, np.integer):
            raise UserError(
                f"semi_positives must be an integer array [n_queries={self.n_q}, m] of gallery labels, got "
                f"shape {a.shape} ({a.dtype}); give one row of semi-positive labels per query"
            )
        assert self.ql is not None
        q = np.repeat(np.arange(self.n_q, dtype=np.int64), a.shape[1])
        lab = a.astype(np.int64).reshape(-1)
        keep = (lab >= 0) & (lab != self.ql[q])
        pairs = np.unique(np.stack([lab[keep], q[keep]], 1), axis=0)  # by label, duplicates dropped
        self._semi_lab, self._semi_q = pairs[:, 0].copy(), pairs[:, 1].copy()

    def set_metric(self, metric: str) -> None:
        """``ip``: scores are inner products; ``l2``: minus squared Euclidean distances."""
        if metric not in METRICS:
            raise UserError(f"unknown retrieval metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.metric = metric
        if metric == "l2":
            self._q_sq = np.einsum("ij,ij->i", self.q, self.q)

    def set_row_positives(self, positives: Sequence[np.ndarray] | None) -> None:
        """``vpr``: each query's positive gallery rows, stored as (row, query) pairs sorted by row."""
        if self.protocol != "vpr":
            return
        if positives is None or len(positives) != self.n_q:
            got = "none" if positives is None else f"{len(positives)} lists"
            raise UserError(
                f"protocol 'vpr' needs each query's positive gallery rows ({self.n_q} lists), got {got}; "
                "give positions to both sides (see retrieve.positive_radius_m)"
            )
        sizes = np.array([len(p) for p in positives], dtype=np.int64)
        g = np.concatenate([np.asarray(p, np.int64).reshape(-1) for p in positives]) if self.n_q else np.zeros(0, np.int64)
        q = np.repeat(np.arange(self.n_q, dtype=np.int64), sizes)
        pairs = np.unique(np.stack([g, q], 1), axis=0) if g.size else np.zeros((0, 2), np.int64)
        if pairs.size and pairs[0, 0] < 0:
            raise UserError(f"positive gallery row {int(pairs[0, 0])} is negative; rows count from 0")
        self._row_g, self._row_q = pairs[:, 0].copy(), pairs[:, 1].copy()

    def semi_pairs(self, chunk: _Chunk) -> tuple[np.ndarray, np.ndarray]:
        """(query index, kept-column index) of every semi-positive pair in ``chunk``."""
        assert self._semi_lab is not None and self._semi_q is not None and chunk.labels is not None
        if chunk.n_kept == 0 or self._semi_lab.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        g_order = np.argsort(chunk.labels, kind="stable")
        g_sorted = chunk.labels[g_order]
        lo = np.searchsorted(g_sorted, self._semi_lab, side="left")
        cnt = np.searchsorted(g_sorted, self._semi_lab, side="right") - lo
        total = int(cnt.sum())
        q_idx = np.repeat(self._semi_q, cnt)
        cols = g_order[np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)]
        return q_idx, cols

    def _count_semi_above(self, blk: _Block, s: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> None:
        """vigor: add, per query, the semi-positives scoring strictly above its best positive, read from
        the very score block the other items were counted in (so the two counts agree on ties)."""
        assert blk.thresholds is not None
        if blk.semi_above is None:
            blk.semi_above = torch.zeros(blk.stop - blk.start, dtype=torch.int64, device=self.dev)
        if rows.size == 0:
            return
        r = torch.from_numpy(rows).to(self.dev)
        v = s[r, torch.from_numpy(cols).to(self.dev)]
        # Thresholds ascend per row (+inf padded): the best positive is at n_pos - 1; +inf without one.
        best = blk.thresholds.gather(1, (blk.n_pos_dev - 1).clamp(min=0)[:, None].to(torch.int64))[:, 0]
        blk.semi_above.index_add_(0, r, (v > best[r]).to(torch.int64))

    def finish_scan(self) -> None:
        """Checks that need the whole gallery's size."""
        if self.n_gallery == 0:
            raise UserError(
                "the gallery is empty (0 descriptors): point the evaluation at a non-empty gallery"
            )
        if self._row_g is not None and self._row_g.size and int(self._row_g[-1]) >= self.n_gallery:
            raise UserError(
                f"a positive names gallery row {int(self._row_g[-1])} but the gallery has {self.n_gallery} "
                "rows; compute positives against this gallery"
            )
        if self.protocol == "cvft" and self.n_gallery != self.n_q:
            raise UserError(
                f"protocol 'cvft' pairs query i with gallery item i, but there are {self.n_q} queries and "
                f"{self.n_gallery} gallery items; give one gallery item per query or use u1652/geoalign"
            )
        if self.k > self.n_kept:
            what = "non-junk gallery items" if self.protocol not in _LABEL_FREE else "gallery items"
            raise UserError(
                f"topk={self.k} exceeds the {self.n_kept} {what}; lower topk to at most {self.n_kept}"
            )

    def gather_positive_scores(self, chunk: _Chunk) -> None:
        """Two-pass mode, pass 1: score every positive pair of ``chunk`` with one dot product each."""
        qi, cols = chunk.pair_q, chunk.pair_col
        assert qi is not None and cols is not None
        if qi.size == 0:
            return
        q = torch.from_numpy(self.q)
        g = torch.from_numpy(chunk.desc)
        per = max(1, BLOCK_BYTES // (8 * self.dim))
        scores = np.empty(qi.size, dtype=np.float32)
        for s in range(0, qi.size, per):
            a = q[torch.from_numpy(qi[s : s + per])].to(self.dev)
            b = g[torch.from_numpy(cols[s : s + per])].to(self.dev)
            ip = (a * b).sum(1)
            if self.metric == "l2":  # the same decomposition as the score blocks
                ip = 2 * ip - (a * a).sum(1) - (b * b).sum(1)
            scores[s : s + per] = ip.cpu().numpy()
        self._pos_q.append(qi)
        self._pos_s.append(scores)

    # ---- planning

    def plan(self, max_chunk_cols: int, *, from_scores: bool) -> None:
        """Order queries by positive count (so padding is small) and cut them into blocks.

        ``from_scores``: single-pass mode, where each block's thresholds come from its own score block.
        """
        self.perm = np.argsort(self.n_pos, kind="stable")
        self.inv_perm = np.empty_like(self.perm)
        self.inv_perm[self.perm] = np.arange(self.n_q)
        identity = bool(np.array_equal(self.perm, np.arange(self.n_q)))
        qp = self.q if identity else self.q[self.perm]
        self._q_dev = torch.from_numpy(qp).to(self.dev)
        if self.metric == "l2":
            q_sq = self._q_sq if identity else self._q_sq[self.perm]
            self._q_sq_dev = torch.from_numpy(np.ascontiguousarray(q_sq, dtype=np.float32)).to(self.dev)
        b = self.block_size or _queries_per_block(max_chunk_cols)
        n_pos_sorted = self.n_pos[self.perm]
        if not from_scores:
            # Two-pass mode: the positives' scores are known now; put them in the internal query order.
            pq = self.inv_perm[np.concatenate(self._pos_q)] if self._pos_q else np.zeros(0, np.int64)
            ps = np.concatenate(self._pos_s) if self._pos_s else np.zeros(0, np.float32)
            order = np.argsort(pq, kind="stable")
            pq, ps = pq[order], ps[order]
            cut = np.searchsorted(pq, np.arange(0, self.n_q + b, b))
            self._pos_q, self._pos_s = [], []
        for bi, start in enumerate(range(0, self.n_q, b)):
            stop = min(self.n_q, start + b)
            n_pos = n_pos_sorted[start:stop]
            blk = _Block(start=start, stop=stop, n_pos=n_pos, n_pos_dev=torch.from_numpy(n_pos).to(self.dev))
            if not from_scores:
                sl = slice(cut[bi], cut[bi + 1])
                self._set_thresholds(blk, pq[sl] - start, ps[sl])
            self.blocks.append(blk)

    def _set_thresholds(self, blk: _Block, rows: np.ndarray, scores: np.ndarray) -> None:
        """Store each query's positive scores as a +inf-padded ascending row (bookkeeping in numpy)."""
        b = blk.stop - blk.start
        t = np.full((b, max(blk.max_pos, 1)), np.inf, dtype=np.float32)
        if rows.size:
            order = np.lexsort((scores, rows))  # by row, then by score
            r = rows[order]
            row_start = np.cumsum(blk.n_pos) - blk.n_pos
            t[r, np.arange(r.size) - row_start[r]] = scores[order]
        blk.thresholds = torch.from_numpy(t).to(self.dev)
        blk.keys = _row_keys(blk.thresholds)
        blk.greater = torch.zeros(t.shape, dtype=torch.int64, device=self.dev)
        blk.pos_greater = torch.zeros(t.shape, dtype=torch.int64, device=self.dev)

    # ---- the hot loop

    def process(self, chunk: _Chunk, *, thresholds_from_scores: bool) -> None:
        """Score one chunk against every query block; update counters and the running top-K."""
        if chunk.n_kept == 0:
            return
        g = torch.from_numpy(chunk.desc).to(self.dev)
        rows = torch.from_numpy(chunk.rows).to(self.dev)
        assert chunk.pair_q is not None and chunk.pair_col is not None
        pq, cols = self.inv_perm[chunk.pair_q], chunk.pair_col
        order = np.argsort(pq, kind="stable")
        pq, cols = pq[order], cols[order]
        bounds = np.searchsorted(pq, [blk.start for blk in self.blocks] + [self.n_q])
        if chunk.semi_q is not None:
            sq = self.inv_perm[chunk.semi_q]
            s_order = np.argsort(sq, kind="stable")
            sq, scols = sq[s_order], chunk.semi_col[s_order]
            s_bounds = np.searchsorted(sq, [blk.start for blk in self.blocks] + [self.n_q])
        for bi, blk in enumerate(self.blocks):
            s = self.score_block(blk, g, chunk)
            self._merge_topk(blk, s, rows)
            prow_np = pq[bounds[bi] : bounds[bi + 1]] - blk.start
            prow = torch.from_numpy(prow_np).to(self.dev)
            pcol = torch.from_numpy(cols[bounds[bi] : bounds[bi + 1]]).to(self.dev)
            pval = s[prow, pcol]
            if thresholds_from_scores:
                self._set_thresholds(blk, prow_np, pval.cpu().numpy())
            assert blk.thresholds is not None and blk.greater is not None and blk.pos_greater is not None
            if blk.max_pos > 0:
                blk.greater += count_greater(s, blk.thresholds, blk.n_pos_dev, blk.keys, self.work)
                # The same count restricted to the positives, from the very same score values, so
                # greater - pos_greater is exactly the number of negatives ranked above each positive.
                end = _count_below(blk.keys, blk.thresholds.shape[1], prow, pval)
                _add_ranges(blk.pos_greater, prow, torch.zeros_like(end), end)
            if chunk.semi_q is not None:
                lo, hi = s_bounds[bi], s_bounds[bi + 1]
                self._count_semi_above(blk, s, sq[lo:hi] - blk.start, scols[lo:hi])
            del s

    def score_block(self, blk: _Block, g: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
        """Scores of the block's queries against the chunk's kept items: one matmul."""
        assert self._q_dev is not None
        qb = self._q_dev[blk.start : blk.stop]
        s = torch.mm(qb, g.T, out=self.work.get("scores", (qb.shape[0], g.shape[0]), torch.float32, self.dev))
        if self.metric == "l2":
            # -|q - g|^2 = 2 q.g - |g|^2 - |q|^2, in place on the score block.
            g_sq = (g * g).sum(1)
            s.mul_(2).sub_(g_sq[None, :]).sub_(self._q_sq_dev[blk.start : blk.stop, None])
        return s

    def _merge_topk(self, blk: _Block, s: torch.Tensor, rows: torch.Tensor) -> None:
        v, i = torch.topk(s, min(self.k, s.shape[1]), dim=1)
        if blk.top_v is None or blk.top_i is None:
            blk.top_v, blk.top_i = v, rows[i]
            return
        cat_v = torch.cat([blk.top_v, v], 1)
        cat_i = torch.cat([blk.top_i, rows[i]], 1)
        v2, j = torch.topk(cat_v, min(self.k, cat_v.shape[1]), dim=1)
        blk.top_v, blk.top_i = v2, torch.gather(cat_i, 1, j)

    # ---- results

    def results(self) -> QueryResults:
        first = np.full(self.n_q, -1, dtype=np.int64)
        ap = np.zeros(self.n_q, dtype=np.float64)
        top_v = np.empty((self.n_q, self.k), dtype=np.float32)
        top_i = np.empty((self.n_q, self.k), dtype=np.int64)
        hit = np.zeros(self.n_q, dtype=bool)
        for blk in self.blocks:
            sl = slice(blk.start, blk.stop)
            assert blk.top_v is not None and blk.top_i is not None
            v, i = blk.top_v.cpu().numpy(), blk.top_i.cpu().numpy()
            # Equal scores: lower gallery row first (topk's order among ties is unspecified).
            order = np.lexsort((i, -v), axis=1) if v.shape[1] > 1 else np.zeros(v.shape, dtype=np.int64)
            top_v[sl] = np.take_along_axis(v, order, 1)
            top_i[sl] = np.take_along_axis(i, order, 1)
            if blk.greater is None or blk.pos_greater is None:
                continue
            neg_above = (blk.greater - blk.pos_greater).cpu().numpy()
            first[sl], ap[sl] = _ranks_to_metrics(neg_above, blk.n_pos, self.protocol)
            if self.protocol == "vigor":
                semi = blk.semi_above.cpu().numpy() if blk.semi_above is not None else 0
                hit[sl] = (blk.n_pos > 0) & (first[sl] - semi == 0)
        inv = self.inv_perm
        if self.protocol in _LABEL_FREE:
            ap[:] = np.nan
        if self.protocol == "vigor":
            ap[:] = np.nan  # Sample4Geo's VIGOR evaluation has no AP
        return QueryResults(
            first_rank=first[inv],
            ap=ap[inv],
            topk=top_i[inv],
            topk_scores=top_v[inv],
            n_positives=self.n_pos.copy(),
            hit=hit[inv] if self.protocol == "vigor" else None,
        )


class _ScoreEvaluation(_Evaluation):
    """An evaluation whose score blocks are slices of a given score matrix (rows in the caller's order)."""

    def __init__(self, scores: np.ndarray, *args: Any) -> None:
        super().__init__(*args)
        self._scores = torch.from_numpy(scores)

    def score_block(self, blk: _Block, g: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
        q_rows = torch.from_numpy(self.perm[blk.start : blk.stop])
        cols = torch.from_numpy(chunk.rows)
        return self._scores[q_rows][:, cols].to(self.dev).contiguous()


# --------------------------------------------------------------------------------------------------------
# Kernels


def _queries_per_block(n_cols: int) -> int:
    """Queries per block so that a float32 [queries, n_cols] score block is about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // (4 * max(1, n_cols)))


def _ranks_to_metrics(
    neg_above: np.ndarray, n_pos: np.ndarray, protocol: str
) -> tuple[np.ndarray, np.ndarray]:
    """First-positive rank and AP from, per positive (ascending score order), the negatives above it.

    Positive ``j`` of ``P`` in ascending order is number ``i = P - 1 - j`` in descending order; its rank is
    ``r_i = i + (negatives above it)``: the ``i`` better positives and those negatives come first.
    """
    b, p = neg_above.shape
    j = np.arange(p)[None, :]
    valid = j < n_pos[:, None]
    i = (n_pos[:, None] - 1 - j).astype(np.float64)
    r = i + neg_above
    first = np.where(n_pos > 0, neg_above[np.arange(b), np.maximum(n_pos - 1, 0)], -1).astype(np.int64)
    denom = np.maximum(n_pos, 1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = (i + 1.0) / (r + 1.0)
        if protocol == "u1652":
            old = np.where(r == 0, 1.0, i / np.where(r == 0, 1.0, r))
            term = (old + precision) / 2.0
        else:
            term = precision
    ap = np.where(valid, term, 0.0).sum(1) / denom
    return first, np.where(n_pos > 0, ap, 0.0)


def _sortable_keys(x: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) with the same order as the float32 values (-0.0 == +0.0)."""
    bits = (x + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31


def _row_keys(t: torch.Tensor) -> torch.Tensor:
    """Row-major keys (row, value) of an ascending-per-row matrix: one globally sorted 1-D array."""
    rows = torch.arange(t.shape[0], device=t.device, dtype=torch.int64)[:, None]
    return (rows * 2**32 + _sortable_keys(t)).reshape(-1)


def _count_below(keys: torch.Tensor, p: int, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each (row, value): how many of that row's thresholds are strictly smaller than value."""
    if rows.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=keys.device)
    q = rows.to(torch.int64) * 2**32 + _sortable_keys(values)
    return torch.searchsorted(keys, q) - rows.to(torch.int64) * p


def _add_ranges(acc: torch.Tensor, rows: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> None:
    """acc[r, start:end] += 1 for every triple, via a difference array (no Python loop)."""
    if rows.numel() == 0:
        return
    b, p = acc.shape
    diff = torch.zeros(b * (p + 1), dtype=torch.int64, device=acc.device)
    r = rows.to(torch.int64) * (p + 1)
    ones = torch.ones_like(r)
    diff.index_add_(0, r + start, ones)
    diff.index_add_(0, r + end, -ones)
    acc += diff.view(b, p + 1).cumsum(1)[:, :p]


class Workspace:
    """Reusable scratch tensors.

    Why: a fresh 100+ MB tensor per block costs more in page faults (first touch) than the arithmetic on
    it; reusing the same buffers for every block and chunk made the counting kernels several times faster.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised tensor of ``shape`` backed by the named buffer (grown when too small)."""
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = torch.empty(n, dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:n].view(shape)


# Rows of the score block handled at once by the counting kernels (bounds their scratch memory).
_KERNEL_ELEMENTS = 1 << 24


def count_greater(
    s: torch.Tensor,
    t: torch.Tensor,
    n_pos: torch.Tensor,
    keys: torch.Tensor | None = None,
    work: Workspace | None = None,
) -> torch.Tensor:
    """For each row r and each real threshold t[r, j] (j < n_pos[r]): how many of s[r, :] are > t[r, j].

    ``t`` is ascending per row and +inf padded (padding counts 0); returns int64 like ``t``. Exact for
    any data: no float tolerance is involved anywhere.
    """
    work = work or Workspace()
    b, n = s.shape
    p = t.shape[1]
    if p <= _DIRECT_MAX_POSITIVES:
        # Few positives (drone->satellite has one): one comparison pass per positive beats anything that
        # needs index arithmetic. Summing uint8 into int32 is ~2x faster than summing bools.
        out = torch.empty(t.shape, dtype=torch.int64, device=s.device)
        gt = work.get("gt", (b, n), torch.bool, s.device)
        for j in range(p):
            torch.gt(s, t[:, j : j + 1], out=gt)
            out[:, j] = gt.view(torch.uint8).sum(1, dtype=torch.int32)
        return out
    if keys is None:
        keys = _row_keys(t)
    out = torch.zeros(t.shape, dtype=torch.int64, device=s.device)
    step = max(1, _KERNEL_ELEMENTS // max(1, n))
    for r0 in range(0, b, step):
        r1 = min(b, r0 + step)
        out[r0:r1] = _count_greater_bucketed(s[r0:r1], t[r0:r1], n_pos[r0:r1], keys, r0, work)
    return out


def _count_greater_bucketed(
    s: torch.Tensor, t: torch.Tensor, n_pos: torch.Tensor, keys: torch.Tensor, row0: int, work: Workspace
) -> torch.Tensor:
    """Many positives: a monotone bucketing of every score, a histogram, and exact checks for the few.

    Why not ``torch.searchsorted`` of every score into its row's thresholds: that is ~log2(P) dependent
    branches per item; at 701 x 51,355 scores and 54 positives per row it took 3.3 s against 0.32 s for
    this (one thread), a per-row full sort 6.1 s and 54 direct comparison passes 13 s. Here every score gets a bucket ``floor((s - lo) * inv)`` on a uniform grid between
    the row's lowest and highest threshold. The bucket function is monotone (each float op rounds
    monotonically), so an item in a higher bucket than a threshold is certainly greater and one in a
    lower bucket certainly not; a per-row histogram with a suffix sum counts those. Only items sharing a
    bucket with some threshold (a few per threshold) are compared exactly, by a 1-D searchsorted on
    (row, value) keys. ``keys`` are the whole block's threshold keys; ``row0`` is this slice's first row.
    """
    b, n = s.shape
    p = t.shape[1]
    dev = s.device
    n_pos = n_pos.to(torch.int64)
    lo = torch.where(n_pos > 0, t[:, 0], torch.zeros((), device=dev))
    top = t.gather(1, (n_pos - 1).clamp(min=0)[:, None])[:, 0]
    wide = (n_pos >= 2) & (top > lo)
    hi = top
    if not bool(wide.all()):
        # One positive (or all equal): the grid spans [lo, row max] instead.
        hi = torch.where(wide, top, torch.maximum(s.amax(1), lo))
    m = max(16, min(1 << 16, n // _ITEMS_PER_BUCKET))
    # m - 1 (not m) so that hi itself lands inside the grid, never in the overflow bucket of everything
    # above it (which would then all need the exact check).
    inv = (m - 1) / (hi - lo)
    inv = torch.where(torch.isfinite(inv) & (inv > 0), inv, torch.ones((), device=dev))
    n_b = m + 2  # bucket 0: below lo; 1..m: the grid; m + 1: above
    base = torch.arange(b, device=dev, dtype=torch.int64) * n_b
    exact_f32 = b * n_b < 2**24 and s.dtype == torch.float32
    lo_c, inv_c = lo[:, None], inv[:, None]
    offset = (base + 1).to(s.dtype)[:, None] if exact_f32 else torch.ones((), dtype=s.dtype, device=dev)

    def bucket(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # Separate elementwise ops, the same for items and thresholds (nothing fused), so one value always
        # gets one bucket. Clamp to [-1, m], add 1 (and the row's base while that is exact in float32:
        # one float->int conversion of the big block instead of two integer passes), then truncate:
        # the value is >= 0 there, so truncation is floor. Every step is monotone in x.
        return torch.sub(x, lo_c, out=out).mul_(inv_c).clamp_(-1, m).add_(offset)

    y = bucket(s, work.get("bucket_f", (b, n), s.dtype, dev))
    if exact_f32:
        flat = work.get("bucket_i", (b * n,), torch.int32, dev)
        flat.copy_(y.view(-1))
    else:
        flat = (y.to(torch.int64) + base[:, None]).view(-1)
    # Items in a strictly higher bucket than a threshold's: every row holds n items, so with the global
    # inclusive prefix sum C over the row-major histogram that is (row + 1) * n - C[bucket].
    cum = torch.bincount(flat, minlength=b * n_b).cumsum_(0)
    valid = torch.arange(p, device=dev)[None, :] < n_pos[:, None]
    t_flat = bucket(t).to(torch.int64)  # global bucket indices, like flat
    if not exact_f32:
        t_flat += base[:, None]
    row_n = (torch.arange(1, b + 1, device=dev, dtype=torch.int64) * n)[:, None]
    out = torch.where(valid, row_n - cum[t_flat], torch.zeros((), dtype=torch.int64, device=dev))
    del cum
    # Exact part: items in a bucket that holds a threshold (a few per threshold).
    t_valid = t_flat[valid]  # ascending: rows in order, buckets monotone within a row
    has_t = torch.zeros(b * n_b, dtype=torch.bool, device=dev)
    has_t[t_valid] = True
    shared = work.get("shared", (b * n,), torch.bool, dev)
    torch.index_select(has_t, 0, flat, out=shared)
    idx = shared.nonzero().squeeze(1)
    if idx.numel():
        r_sel = idx // n
        v_sel = s.reshape(-1)[idx] if s.is_contiguous() else s[r_sel, idx % n]
        # Thresholds of the row in lower buckets are already counted through the histogram.
        first_t = torch.cumsum(n_pos, 0) - n_pos
        start = torch.searchsorted(t_valid, flat[idx].to(torch.int64)) - first_t[r_sel]
        end = _count_below(keys, p, r_sel + row0, v_sel)
        _add_ranges(out, r_sel, start, end)
    return out


def iter_array_chunks(
    descriptors: np.ndarray, labels: np.ndarray | None, chunk_rows: int
) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]]:
    """A ``gallery_chunks`` callable over in-memory arrays, ``chunk_rows`` rows at a time."""
    if chunk_rows < 1:
        raise UserError(f"chunk_rows must be positive, got {chunk_rows}")

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for s in range(0, len(descriptors), chunk_rows):
            yield descriptors[s : s + chunk_rows], (None if labels is None else labels[s : s + chunk_rows])

    return gen
