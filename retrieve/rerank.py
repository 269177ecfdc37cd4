"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), as the University-1652 community runs it (layumi's ``re_ranking``), vectorised.

The recipe, on the ``N = n_q + n_g`` query and gallery descriptors together:

1. distances ``d = (2 - 2 s)^2`` from the inner products ``s``, each row divided by the largest entry of
   its column (the reference divides columns by their maxima, then transposes);
2. ``R(i)``: the k-reciprocal neighbours of ``i`` among its ``k1 + 1`` nearest (``j`` is in ``i``'s list
   and ``i`` in ``j``'s);
3. expansion: for every ``j`` in ``R(i)``, its half set ``R(j, round(k1 / 2))`` is added when more than 2/3
   of it already lies in ``R(i)``;
4. ``V[i, j] = exp(-d[i, j])`` over the expanded set, normalised to sum 1 per row;
5. local query expansion (``k2 > 1``): each row of ``V`` becomes the mean of the rows of its ``k2``
   nearest neighbours;
6. Jaccard distance ``1 - m / (2 - m)`` with ``m[i, j] = sum_k min(V[i, k], V[j, k])``;
7. ``final = (1 - lambda) * jaccard + lambda * d``, query rows x gallery columns.

Where the reference loops over every item in Python, here the neighbour sets are boolean masks over
the ``k1 + 1`` nearest, the expansion test is one batched membership check, ``V`` is a sparse matrix and
the min-sum is a bincount over the (query entry, gallery entry) pairs that share a column. Numbers
agree with the reference to float32 rounding (it sums in float32, in another order); on distance ties
the neighbour lists may differ, as they do between argsort implementations. Memory: a few dense
``N x N`` float32 matrices, so :func:`k_reciprocal_distance` refuses above ``max_items`` items.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from cvgl.core.errors import UserError

# Pairs (query entry, gallery entry sharing a column) handled per bincount in the Jaccard step.
_PAIRS_PER_STEP = 1 << 23


def check_rerank_size(n_q: int, n_g: int, max_items: int) -> None:
    """Refuse (UserError) when the dense ``(n_q + n_g)^2`` matrices would exceed the configured limit."""
    n = n_q + n_g
    if n > max_items:
        gb = 3 * n * n * 4 / 1e9
        raise UserError(
            f"k-reciprocal re-ranking of {n_q} queries + {n_g} gallery items needs about {gb:.1f} GB of "
            f"(queries + gallery)^2 matrices, above retrieve.rerank_max_items={max_items}; it is meant for "
            "small galleries: raise retrieve.rerank_max_items if the memory is there, or set retrieve.rerank=none"
        )


def k_reciprocal_distance(
    query: np.ndarray,
    gallery: np.ndarray,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_items: int = 12_000,
) -> np.ndarray:
    """Re-ranked distances ``[n_q, n_g]`` (float32, lower = better) of L2-normalised descriptors."""
    q = np.ascontiguousarray(query, dtype=np.float32)
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise UserError(
            f"re-ranking needs [n, d] query and gallery descriptors of one dimension, got {list(q.shape)} "
            f"and {list(g.shape)}"
        )
    n_q, n_g = q.shape[0], g.shape[0]
    if n_q == 0 or n_g == 0:
        raise UserError("re-ranking needs at least one query and one gallery item")
    check_rerank_size(n_q, n_g, max_items)
    n = n_q + n_g
    if not 1 <= k1 < n:
        raise UserError(f"retrieve.k1={k1} must be between 1 and {n - 1} (queries + gallery - 1)")
    if not 1 <= k2 <= k1 + 1:
        raise UserError(f"retrieve.k2={k2} must be between 1 and k1 + 1 = {k1 + 1}")
    if not 0.0 <= lambda_value <= 1.0:
        raise UserError(f"retrieve.lambda_value={lambda_value} must be between 0 and 1")

    dist = _normalised_distance(np.concatenate([q, g]))
    top = torch.topk(torch.from_numpy(dist), k1 + 1, dim=1, largest=False, sorted=True).indices.numpy()
    v = _encode(dist, top, k1)
    if k2 != 1:
        rows = np.repeat(np.arange(n), k2)
        expand = sp.csr_matrix((np.ones(n * k2, np.float32), (rows, top[:, :k2].reshape(-1))), shape=(n, n))
        v = (expand @ v).multiply(np.float32(1.0 / k2)).tocsr()
    jaccard = _jaccard(v, n_q)
    final = jaccard * np.float32(1 - lambda_value) + dist[:n_q, n_q:] * np.float32(lambda_value)
    return final.astype(np.float32, copy=False)


def _normalised_distance(x: np.ndarray) -> np.ndarray:
    """``(2 - 2 x x^T)^2`` with each column divided by its maximum, transposed (the reference's order)."""
    s = torch.from_numpy(x)
    d = torch.mm(s, s.T).mul_(-2).add_(2).pow_(2)
    d /= d.amax(dim=0, keepdim=True)
    return d.T.contiguous().numpy()


def _reciprocal_mask(top: np.ndarray, k: int) -> np.ndarray:
    """[N, k + 1] bool: is ``top[i, a]`` (among i's k + 1 nearest) a k-reciprocal neighbour of ``i``."""
    fwd = top[:, : k + 1]
    back = fwd[fwd]  # [N, k + 1, k + 1]: the k + 1 nearest of each of i's k + 1 nearest
    return (back == np.arange(top.shape[0])[:, None, None]).any(2)


def _encode(dist: np.ndarray, top: np.ndarray, k1: int) -> sp.csr_matrix:
    """The sparse k-reciprocal feature ``V`` (steps 2-4)."""
    n = dist.shape[0]
    kh = int(np.around(k1 / 2))
    fwd, recip = top[:, : k1 + 1], _reciprocal_mask(top, k1)
    fwd_h, recip_h = top[:, : kh + 1], _reciprocal_mask(top, kh)
    size_h = recip_h.sum(1)
    pi, pa = np.nonzero(recip)  # pairs (i, candidate j = fwd[i, a]) with j in R(i)
    pj = fwd[pi, pa]
    accept = np.zeros(pi.size, dtype=bool)
    step = max(1, (1 << 24) // ((kh + 1) * (k1 + 1)))
    for s in range(0, pi.size, step):
        i, j = pi[s : s + step], pj[s : s + step]
        # |R(j, kh) ∩ R(i, k1)|: each member of j's half set looked up among i's reciprocal neighbours.
        in_ri = ((fwd_h[j][:, :, None] == fwd[i][:, None, :]) & recip[i][:, None, :]).any(2)
        inter = (in_ri & recip_h[j]).sum(1)
        accept[s : s + step] = inter > 2.0 / 3 * size_h[j]
    ai, aj = pi[accept], pj[accept]
    hb = recip_h[aj]
    keys = np.concatenate(
        [
            pi.astype(np.int64) * n + pj,
            np.repeat(ai.astype(np.int64), hb.sum(1)) * n + fwd_h[aj][hb],
        ]
    )
    keys = np.unique(keys)
    rows, cols = keys // n, keys % n
    w = np.exp(-dist[rows, cols])
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    sums = np.add.reduceat(w, starts)
    w /= np.repeat(sums, np.diff(np.r_[starts, rows.size]))
    return sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n, n))


def _jaccard(v: sp.csr_matrix, n_q: int) -> np.ndarray:
    """``1 - m / (2 - m)``, ``m[i, j] = sum_k min(V[i, k], V[n_q + j, k])``, queries x gallery (step 6)."""
    n = v.shape[0]
    n_g = n - n_q
    vq = v[:n_q].tocsr()
    vg = v[n_q:].tocsc()  # column k: the gallery rows where V is non-zero
    col_nnz = np.diff(vg.indptr)
    entry_pairs = col_nnz[vq.indices]  # per query entry: gallery entries sharing its column
    entry_row = np.repeat(np.arange(n_q), np.diff(vq.indptr))
    row_pairs = np.bincount(entry_row, weights=entry_pairs, minlength=n_q).astype(np.int64)
    out = np.empty((n_q, n_g), dtype=np.float32)
    r0 = 0
    cum = np.cumsum(row_pairs)
    while r0 < n_q:
        base = cum[r0 - 1] if r0 else 0
        r1 = max(r0 + 1, int(np.searchsorted(cum, base + _PAIRS_PER_STEP, side="right")))
        r1 = min(r1, n_q)
        e0, e1 = vq.indptr[r0], vq.indptr[r1]
        cnt = entry_pairs[e0:e1]
        total = int(cnt.sum())
        row_of_entry = entry_row[e0:e1] - r0
        first = np.repeat(vg.indptr[vq.indices[e0:e1]] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        pair_min = np.minimum(np.repeat(vq.data[e0:e1], cnt), vg.data[first])
        flat = np.repeat(row_of_entry, cnt) * n_g + vg.indices[first]
        m = np.bincount(flat, weights=pair_min, minlength=(r1 - r0) * n_g).reshape(r1 - r0, n_g)
        out[r0:r1] = 1 - m / (2 - m)
        r0 = r1
    return out
