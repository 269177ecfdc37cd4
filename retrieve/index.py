"""FAISS nearest-neighbour search by inner product (cosine on L2-normalised descriptors).

For now an exact flat index (``IndexFlatIP``), on the GPU when faiss was built with GPU support and a GPU
is present. Gallery rows get ids 0..N-1 in the order they are added, i.e. the gallery's row order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faiss
import numpy as np
from cvgl.core.errors import UserError

# faiss' GPU brute-force search returns at most this many neighbours per query.
GPU_MAX_K = 2048


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_flat_index(dim: int, use_gpu: bool | str = "auto") -> faiss.Index:
    """An empty exact inner-product index of dimension ``dim``; ``use_gpu``: "auto", True or False."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UserError(f"index dimension must be a positive integer, got {dim!r}")
    if use_gpu not in ("auto", True, False):
        raise UserError(f"use_gpu must be 'auto', true or false, got {use_gpu!r}")
    index = faiss.IndexFlatIP(int(dim))
    if use_gpu is True and not gpu_available():
        raise UserError(
            "use_gpu=true but this faiss has no GPU support or sees no GPU; install faiss-gpu or set use_gpu=false"
        )
    if use_gpu is True or (use_gpu == "auto" and gpu_available()):
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
        # The index does not own its resources object; keep it alive as long as the index.
        index.gpu_resources = res
    return index


def _as_matrix(x: Any, dim: int, what: str) -> np.ndarray:
    """float32, C-contiguous [n, dim] copy or view of ``x`` (what faiss requires), validated."""
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise UserError(f"{what} must be a 2-D array [n, dim], got shape {a.shape}")
    if a.shape[1] != dim:
        raise UserError(
            f"{what} have dimension {a.shape[1]} but the index has {dim}; "
            "use descriptors from the same backbone, layer and pooling"
        )
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise UserError(f"{what} contain NaN or inf; re-extract them or check the cache entry")
    return a


def add_chunks(index: faiss.Index, chunks: Iterable[Any]) -> int:
    """Add gallery chunks in order (arrays, or ``(descriptors, labels)`` tuples); returns rows added."""
    added = 0
    for i, chunk in enumerate(chunks):
        desc = chunk[0] if isinstance(chunk, tuple) else chunk
        a = _as_matrix(desc, index.d, f"gallery chunk {i} descriptors")
        if a.shape[0]:
            index.add(a)
            added += a.shape[0]
    return added


def search(index: faiss.Index, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest inner products per query: (scores float32 [n, k], gallery ids int64 [n, k])."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if index.ntotal == 0:
        raise UserError("the index is empty: add gallery descriptors before searching")
    if k > index.ntotal:
        raise UserError(f"k={k} exceeds the {index.ntotal} gallery items in the index; lower k")
    if hasattr(index, "getDevice") and k > GPU_MAX_K:
        raise UserError(
            f"k={k} exceeds faiss' GPU limit of {GPU_MAX_K}; lower k or use a CPU index (use_gpu=false)"
        )
    q = _as_matrix(queries, index.d, "query descriptors")
    if q.shape[0] == 0:
        raise UserError("no query descriptors to search with: the query set is empty")
    scores, ids = index.search(q, int(k))
    return scores, ids.astype(np.int64, copy=False)
