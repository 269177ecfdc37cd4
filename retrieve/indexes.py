"""FAISS indexes that serve top-K lists at scale: flat, IVF-Flat, IVF-PQ, HNSW; built from cache shards and
cached themselves.

Metrics never come from here (``retrieve.metrics`` computes them exactly); an index only answers "which
K gallery items score highest for this query", approximately for the ANN kinds. All indexes use inner
product on L2-normalised rows, i.e. cosine: :func:`build_index` normalises every gallery row it adds
and :func:`search` every query (:func:`l2_normalize_rows`, which the retrieval stage also applies to
the exact pass), so entries from any source (extracted, aligned, imported) are scored alike; gallery
row ``i`` has id ``i``.

* **Streaming build**: the gallery arrives as chunks (cache shards, one in memory at a time). IVF kinds
  train their coarse quantizer (and product quantizer) on ``train_size`` rows drawn uniformly at random
  across all chunks, then every chunk is added in order. IVF-PQ keeps ``pq_m`` bytes per row (at 8 bits),
  so a gallery larger than RAM still fits its index; flat, IVF-Flat and HNSW keep float32 rows
  (``4 * dim`` bytes each) and so do IVF-PQ's ``refine`` vectors.
* **Index cache**: ``<cache_root>/indexes/<key>/index.faiss`` + ``index.json``. The key is the sha256 of
  the gallery entry's key and the parameters that shape the built index (search-time ``nprobe`` /
  ``ef_search`` are not part of it, so changing them reuses the index). ``index.faiss`` is written to a
  temporary name and renamed; ``index.json``, written last, marks the index complete and records the
  gallery's fingerprint (its shards' sha256s) and the sha256 of ``index.faiss``, verified on every load
  (a faiss file with flipped bytes can still parse and would serve wrong lists). An index whose
  ``index.json`` is unreadable or lacks the checksum, or whose ``index.faiss`` does not match it, is
  rebuilt, with a one-line note on stderr. An index whose gallery entry has changed since (same key,
  different shards) is stale: it is refused with a message, or rebuilt with ``rebuild=True``;
  :func:`stale_indexes` / :func:`gc_indexes` find and remove indexes whose gallery entry is gone or changed.
* **Junk**: gallery rows labelled -1 stay in the index (it does not depend on the protocol) and are
  excluded at search time with an ``IDSelector`` (on GPU, by fetching more and dropping them).
* **GPU**: flat and IVF indexes are copied to the GPU(s) for search when faiss has GPU support
  (``faiss.get_num_gpus()``); with several GPUs the gallery is sharded across them (``IndexShards``).
  HNSW runs on the CPU (faiss has no GPU HNSW).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from cvgl.cache.manifest import Manifest, read_manifest
from cvgl.cache.store import CacheStore, Entry
from cvgl.core.atomic import atomic_path, write_json_atomic
from cvgl.core.errors import UserError
from cvgl.core.keys import canonical_json, content_key, file_sha256

# faiss' GPU brute-force search returns at most this many neighbours per query.
GPU_MAX_K = 2048


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


KINDS = ("flat", "ivf_flat", "ivf_pq", "hnsw")
INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1
# Queries per faiss search call (bounds the result and heap memory of one call).
SEARCH_BATCH = 16_384

Chunks = Callable[[], Iterable[np.ndarray]]


@dataclass(frozen=True)
class IndexParams:
    """What to build and how to search it (see ``RetrieveConfig`` for the meaning of each field)."""

    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 32
    pq_m: int = 0
    pq_nbits: int = 8
    refine: int = 0
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_size: int = 0
    seed: int = 0

    @classmethod
    def from_config(cls, rc: Any, seed: int = 0) -> IndexParams:
        """From a ``RetrieveConfig`` (``rc.index`` is the kind)."""
        return cls(
            kind=rc.index,
            nlist=rc.nlist,
            nprobe=rc.nprobe,
            pq_m=rc.pq_m,
            pq_nbits=rc.pq_nbits,
            refine=rc.refine,
            hnsw_m=rc.hnsw_m,
            ef_construction=rc.ef_construction,
            ef_search=rc.ef_search,
            train_size=rc.train_size,
            seed=seed,
        )

    @property
    def trained(self) -> bool:
        return self.kind in ("ivf_flat", "ivf_pq")

    def resolved(self, n: int, dim: int) -> IndexParams:
        """The parameters with every 0 = auto filled in for a gallery of ``n`` rows of dimension ``dim``."""
        if self.kind not in KINDS:
            raise UserError(f"unknown index {self.kind!r}; choose one of {', '.join(KINDS)}")
        if n < 1:
            raise UserError("the gallery is empty (0 descriptors): nothing to index")
        p = self
        if self.trained:
            nlist = self.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
            if nlist > n:
                raise UserError(
                    f"retrieve.nlist={nlist} exceeds the {n} gallery rows; use at most {max(1, n // 39)} "
                    "(faiss wants about 39 training rows per cell), or 0 for auto"
                )
            pq_m = self.pq_m
            if self.kind == "ivf_pq":
                pq_m = pq_m or max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
                if dim % pq_m:
                    raise UserError(
                        f"retrieve.pq_m={pq_m} does not divide the descriptor dimension {dim}; pick a divisor "
                        f"of {dim} (e.g. {max(d for d in range(1, dim // 4 + 1) if dim % d == 0)}) or 0 for auto"
                    )
            need = max(nlist, 2**self.pq_nbits if self.kind == "ivf_pq" else 1)
            train = self.train_size or min(n, max(64 * nlist, 64 * need))
            train = min(train, n)
            if train < need:
                hint = "lower retrieve.pq_nbits (e.g. 4) or " if self.kind == "ivf_pq" else ""
                raise UserError(
                    f"{self.kind} needs at least {need} training rows (nlist={nlist}, {2**self.pq_nbits} PQ "
                    f"centroids) but only {train} are available; {hint}lower retrieve.nlist, or use index=flat"
                )
            p = replace(p, nlist=nlist, pq_m=pq_m, train_size=train)
        return p

    def build_spec(self) -> dict[str, Any]:
        """The parameters that shape the built index (the index cache key): no search-time settings."""
        spec: dict[str, Any] = {"kind": self.kind}
        if self.trained:
            spec.update(nlist=self.nlist, train_size=self.train_size, seed=self.seed)
        if self.kind == "ivf_pq":
            spec.update(pq_m=self.pq_m, pq_nbits=self.pq_nbits, refine=self.refine > 0)
        if self.kind == "hnsw":
            spec.update(hnsw_m=self.hnsw_m, ef_construction=self.ef_construction)
        return spec

    def search_spec(self) -> dict[str, Any]:
        """The search-time settings of this kind."""
        if self.trained:
            out: dict[str, Any] = {"nprobe": self.nprobe}
            if self.kind == "ivf_pq" and self.refine:
                out["refine"] = self.refine
            return out
        if self.kind == "hnsw":
            return {"ef_search": self.ef_search}
        return {}


# --------------------------------------------------------------------------------------------------------
# Building


def new_index(params: IndexParams, dim: int) -> faiss.Index:
    """An empty (untrained) CPU index for resolved ``params``."""
    ip = faiss.METRIC_INNER_PRODUCT
    if params.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, ip)
        index.hnsw.efConstruction = params.ef_construction
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if params.kind == "ivf_flat":
        return faiss.IndexIVFFlat(quantizer, dim, params.nlist, ip)
    return faiss.IndexIVFPQ(quantizer, dim, params.nlist, params.pq_m, params.pq_nbits, ip)


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C++ code writes to fd 2 (faiss' k-means prints warnings there unconditionally)."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(ln for ln in tmp.read().decode(errors="replace").splitlines() if ln.strip())


def sample_rows(chunks: Chunks, n_total: int, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement across all chunks (one chunk in memory at a time)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_total, size=min(size, n_total), replace=False))
    out: np.ndarray | None = None
    offset = filled = 0
    for chunk in chunks():
        a = _as_rows(chunk)
        lo, hi = np.searchsorted(pick, [offset, offset + a.shape[0]])
        if out is None:
            out = np.empty((pick.size, a.shape[1]), dtype=np.float32)
        out[filled : filled + hi - lo] = a[pick[lo:hi] - offset]
        filled += hi - lo
        offset += a.shape[0]
    if out is None or filled != pick.size:
        raise UserError(
            f"the gallery gave {offset} rows while indexing, expected {n_total}; check the cache entry"
        )
    return out


def _as_rows(chunk: Any) -> np.ndarray:
    desc = chunk[0] if isinstance(chunk, tuple) else chunk
    a = np.asarray(desc)
    return np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float32)


# Rows whose norm is this close to 1 are left bit-for-bit as they are: they are unit vectors up to
# float32 rounding, and dividing by 1 ± 1 ulp would only move scores by rounding noise.
_UNIT_TOLERANCE = 4 * float(np.finfo(np.float32).eps)


def l2_normalize_rows(rows: Any, what: str, offset: int = 0) -> np.ndarray:
    """``rows`` as float32 C-contiguous ``[n, d]`` with every row scaled to unit L2 norm (cosine scores).

    Scores are documented as inner products of L2-normalised descriptors, and entries can come from
    anywhere (an import of raw arrays included), so retrieval normalises at scoring time rather than
    trusting the producer. Rows already of unit norm (within float32 rounding) are returned unchanged.
    Rows holding NaN or inf are passed through for the metrics to refuse with their own message.

    Raises:
        UserError: an all-zero row (it has no direction); ``what`` names the set and ``offset`` is the
            row number of ``rows[0]`` in it, so the message points at the right row.
    """
    src = np.asarray(rows)
    a = np.ascontiguousarray(src.reshape(src.shape[0], -1), dtype=np.float32)
    if a.size == 0:
        return a
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise UserError(
            f"{what} has {zero.size} all-zero descriptor row(s) (first: row {offset + int(zero[0])}); "
            "a zero vector has no direction, so its cosine scores are undefined: remove those rows or "
            "re-extract them"
        )
    scale = np.where(np.abs(norms - 1) <= _UNIT_TOLERANCE, np.float32(1), norms)
    big = np.flatnonzero(np.isinf(norms))  # NaN/inf rows, or finite rows whose squares overflow float32
    if np.all(scale == 1) and not big.size:
        return a
    if not np.may_share_memory(a, src):  # a is our own copy (e.g. float16 shards): scale it in place
        out = a
    else:
        out = np.empty_like(a)
    scale[big] = 1
    scale[np.isnan(scale)] = 1  # NaN rows: left as they are for the metrics' NaN/inf refusal
    np.divide(a, scale[:, None], out=out)
    for i in big:
        row = a[i].astype(np.float64)
        if np.isfinite(row).all():
            out[i] = (row / np.linalg.norm(row)).astype(np.float32)
    return out


def _normalized_chunks(chunks: Chunks, what: str) -> Chunks:
    """``chunks`` with every chunk's rows flattened and L2-normalised (see :func:`l2_normalize_rows`)."""

    def gen() -> Iterator[np.ndarray]:
        offset = 0
        for chunk in chunks():
            a = _as_rows(chunk)
            yield l2_normalize_rows(a, what, offset)
            offset += a.shape[0]

    return gen


def build_index(
    chunks: Chunks,
    n_total: int,
    dim: int,
    params: IndexParams,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    what: str = "the gallery",
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a CPU index from gallery chunks (arrays or ``(descriptors, labels)`` tuples, in row order).

    ``chunks`` is called once (twice for IVF kinds: sampling, then adding). Rows are L2-normalised as
    they are read (:func:`l2_normalize_rows`; ``what`` names the gallery in its refusal of an all-zero
    row). Returns the index and build info (seconds, training rows, faiss' training warnings).
    """
    p = params.resolved(n_total, dim)
    chunks = _normalized_chunks(chunks, what)
    index = new_index(p, dim)
    info: dict[str, Any] = {}
    desc = f"indexing gallery ({p.kind})"
    if progress:
        # Reported before training too: an IVF build spends its first minutes sampling and training.
        progress(desc, 0, n_total)
    t0 = time.perf_counter()
    if p.trained:
        train = sample_rows(chunks, n_total, p.train_size, p.seed)
        with _captured_stderr() as warnings_:
            index.train(train)
        info["train_rows"] = int(train.shape[0])
        if warnings_:
            info["train_warnings"] = warnings_
        del train
        if p.kind == "ivf_pq" and p.refine:
            index = faiss.IndexRefineFlat(index)
    info["train_s"] = round(time.perf_counter() - t0, 3)
    added = 0
    for chunk in chunks():
        a = _as_rows(chunk)
        if a.shape[1] != dim:
            raise UserError(
                f"gallery rows have dimension {a.shape[1]} but the index was made for {dim}; "
                "index descriptors from one entry"
            )
        if a.shape[0]:
            index.add(a)
            added += a.shape[0]
            if progress:
                progress(desc, added, n_total)
    if added != n_total:
        raise UserError(
            f"the gallery gave {added} rows while indexing, expected {n_total}; check the cache entry"
        )
    info["build_s"] = round(time.perf_counter() - t0, 3)
    return index, info


# --------------------------------------------------------------------------------------------------------
# Searching


@dataclass
class ServedIndex:
    """An index ready to search: the faiss object, its resolved parameters, where it lives."""

    index: faiss.Index
    params: IndexParams
    on_gpu: bool = False
    info: dict[str, Any] | None = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


def to_gpu(served: ServedIndex) -> ServedIndex:
    """Copy a flat/IVF index to the GPU(s) when faiss has GPU support; HNSW (and no GPU) stays as it is."""
    if served.params.kind == "hnsw" or not gpu_available():
        return served
    co = faiss.GpuMultipleClonerOptions()
    co.shard = True  # several GPUs: each holds a slice of the gallery (IndexShards)
    co.useFloat16LookupTables = served.params.kind == "ivf_pq" and served.params.pq_m > 48
    try:
        index = faiss.index_cpu_to_all_gpus(served.index, co=co)
    except RuntimeError as e:  # e.g. an IVF-PQ layout the GPU code does not support
        info = dict(served.info or {}, gpu_fallback=str(e).splitlines()[0][:200])
        return replace(served, info=info)
    return replace(served, index=index, on_gpu=True)


def _search_params(params: IndexParams, sel: Any) -> Any:
    if params.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=params.ef_search, sel=sel)
    if params.trained:
        ivf = faiss.SearchParametersIVF(nprobe=params.nprobe, sel=sel)
        if params.kind == "ivf_pq" and params.refine:
            return faiss.IndexRefineSearchParameters(k_factor=float(params.refine), base_index_params=ivf)
        return ivf
    return faiss.SearchParameters(sel=sel)


def search(
    served: ServedIndex, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores float32 [n, k], ids int64 [n, k]) per query, never returning ids in ``exclude``.

    Queries are L2-normalised first, so scores are cosines. Missing results (an IVF probe that found
    fewer than ``k`` items) are id -1 with score -inf.
    """
    n_total = served.ntotal
    excl = np.unique(np.asarray(exclude, dtype=np.int64)) if exclude is not None else np.zeros(0, np.int64)
    n_avail = n_total - excl.size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if n_avail < 1:
        raise UserError("the index holds no searchable gallery items (all are junk or it is empty)")
    if k > n_avail:
        raise UserError(f"k={k} exceeds the {n_avail} searchable gallery items in the index; lower topk")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != served.index.d:
        raise UserError(
            f"query descriptors have shape {list(q.shape)} but the index has dimension {served.index.d}; "
            "use descriptors from the same backbone, layer and pooling"
        )
    q = l2_normalize_rows(q, "the query set")  # the index holds unit rows: scores are cosines
    fetch, sel = k, None
    if excl.size:
        if served.on_gpu:
            fetch = k + excl.size  # GPU search has no ID selector: fetch more, drop the junk
            if fetch > GPU_MAX_K:
                raise UserError(
                    f"{excl.size} junk gallery items + k={k} exceed faiss' GPU limit of {GPU_MAX_K} results; "
                    "use a CPU index (retrieve.device=cpu) or drop the junk rows from the gallery"
                )
        else:
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(excl))
    sp = None if served.on_gpu else _search_params(served.params, sel)
    if served.on_gpu and served.params.trained:
        faiss.GpuParameterSpace().set_index_parameter(served.index, "nprobe", served.params.nprobe)
    scores = np.empty((q.shape[0], k), dtype=np.float32)
    ids = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], SEARCH_BATCH):
        qb = q[s : s + SEARCH_BATCH]
        d, i = served.index.search(qb, fetch) if sp is None else served.index.search(qb, fetch, params=sp)
        if fetch != k:
            d, i = _drop_ids(d, i, excl, k)
        i = i.astype(np.int64, copy=False)
        d = np.where(i >= 0, d, -np.inf).astype(np.float32)
        scores[s : s + qb.shape[0]], ids[s : s + qb.shape[0]] = d, i
    return scores, ids


def _drop_ids(d: np.ndarray, i: np.ndarray, excl: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove excluded ids from each row (keeping order) and keep the first ``k``, padding with -1."""
    bad = np.isin(i, excl) | (i < 0)
    order = np.argsort(bad, axis=1, kind="stable")[:, :k]
    d2, i2 = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    gone = np.take_along_axis(bad, order, 1)
    return np.where(gone, -np.inf, d2), np.where(gone, -1, i2)


def recall_vs_exact(approx: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(K-recall@K, 1-recall@K): the share of the exact top-K the approximate lists found, and the share
    of queries whose exact nearest neighbour is in the approximate top-K. Both [n, K] id arrays."""
    k = exact.shape[1]
    a = np.where(approx < 0, -2, approx)  # padding never matches a real id
    hits = (a[:, :, None] == exact[:, None, :]).any(1)  # [n, K]: exact item j found
    return float(hits.mean()), float(hits[:, 0].mean()) if k else 0.0


# --------------------------------------------------------------------------------------------------------
# The index cache


def gallery_fingerprint(entry: Entry | Manifest) -> str:
    """sha256 of what the gallery entry holds (its shards' checksums and row ranges)."""
    m = entry.manifest if isinstance(entry, Entry) else entry
    shards = [[s.file, s.row_start, s.row_end, s.sha256] for s in m.shards]
    return hashlib.sha256(canonical_json([m.key, m.count, m.shape, m.dtype, shards])).hexdigest()


def index_key(gallery_key: str, params: IndexParams) -> str:
    """The index cache key: the gallery entry's key + the parameters that shape the built index."""
    return content_key(
        {
            "kind": "faiss_index",
            "format": FORMAT_VERSION,
            "gallery": gallery_key,
            "index": params.build_spec(),
        }
    )


def index_dir(store: CacheStore, key: str) -> Path:
    return store.root / "indexes" / key


def entry_chunks(entry: Entry) -> Chunks:
    """A chunks callable over an entry's shards, rows flattened to vectors."""

    def gen() -> Iterator[np.ndarray]:
        for d, _, _ in entry.iter_chunks():
            yield d.reshape(d.shape[0], -1)

    return gen


def open_or_build(
    store: CacheStore,
    gallery: Entry,
    params: IndexParams,
    *,
    rebuild: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> ServedIndex:
    """The cached index of ``gallery`` for ``params``: reused when fresh, else built and cached.

    A cached index whose gallery entry changed since it was built is refused (UserError) unless
    ``rebuild``, in which case it is rebuilt. A cached index that cannot be trusted (unreadable
    ``index.json``, no checksum, ``index.faiss`` not matching it, or not loadable) is rebuilt whatever
    ``rebuild`` says, with a one-line note on stderr. ``info["index_cache"]`` says which happened.
    """
    p = params.resolved(gallery.count, gallery.dim)
    key = index_key(gallery.key, p)
    d = index_dir(store, key)
    fp = gallery_fingerprint(gallery)
    with store.lock(f"index-{key}"):
        meta = _read_meta(d)
        status = "built"
        if meta is not None:
            problem = _untrusted(d, meta)
            if problem is None and meta.get("gallery_fingerprint") != fp:
                if not rebuild:
                    raise UserError(
                        f"the cached {p.kind} index {d} was built from a different version of gallery "
                        f"{gallery.label} (entry {gallery.key[:12]} changed since); rerun with "
                        "retrieve.rebuild_index=true to rebuild it, or delete that folder"
                    )
                status = "rebuilt (gallery entry changed)"
            elif problem is None:
                index = _read_index(d)
                if index is not None and index.ntotal == gallery.count and index.d == gallery.dim:
                    build_info = meta.get("build")
                    info = {
                        **(build_info if isinstance(build_info, dict) else {}),
                        "index_cache": "reused",
                        "index_key": key,
                        "path": str(d),
                    }
                    return ServedIndex(index, p, info=info)
                problem = "index.faiss cannot be loaded or does not hold the gallery's rows"
            if problem is not None:
                # Not an error (the gallery is fine and the index is derived data), but never silent:
                # a rebuild costs time, and a damaged cache is worth knowing about.
                print(
                    f"note: cached {p.kind} index {d}: {problem}; rebuilding it", file=sys.stderr, flush=True
                )
                status = f"rebuilt ({problem})"
        if d.exists() or d.is_symlink():
            from cvgl.cache.store import safe_rmtree

            safe_rmtree(store.root, d)  # never follows stored text or a link out of the cache
        index, build = build_index(
            entry_chunks(gallery),
            gallery.count,
            gallery.dim,
            p,
            progress=progress,
            what=f"gallery {gallery.label}",
        )
        _write(d, index, key, gallery, fp, p, build)
    info = {**build, "index_cache": status, "index_key": key, "path": str(d)}
    return ServedIndex(index, p, info=info)


def _read_meta(d: Path) -> dict | None:
    """``index.json`` as a dict; None when there is none; ``{}`` when it is unreadable or not an object."""
    try:
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable (also UnicodeDecodeError, a ValueError): treated as untrusted
    return meta if isinstance(meta, dict) else {}


def _untrusted(d: Path, meta: dict) -> str | None:
    """Why the cached index in ``d`` cannot be used as it is; None when index.faiss matches its checksum."""
    if not meta:
        return "index.json is unreadable"
    want = meta.get("index_sha256")
    if not isinstance(want, str):
        return "index.json has no checksum of index.faiss (written by an older version)"
    try:
        got = file_sha256(d / INDEX_FILE)
    except OSError:
        return "index.faiss is missing or unreadable"
    if got != want:
        return "index.faiss does not match its checksum in index.json, so it is corrupted"
    return None


def _read_index(d: Path) -> faiss.Index | None:
    """The faiss index in ``d``, or None when faiss cannot read it (the caller rebuilds it)."""
    try:
        return faiss.read_index(str(d / INDEX_FILE))
    except RuntimeError:
        return None


def _write(
    d: Path, index: faiss.Index, key: str, gallery: Entry, fp: str, p: IndexParams, build: dict
) -> None:
    """index.faiss via a temporary name + rename, then index.json (its presence = complete) holding
    index.faiss's sha256."""
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(d / INDEX_FILE) as tmp:
        faiss.write_index(index, str(tmp))
        sha = file_sha256(tmp)
    meta = {
        "key": key,
        "format": FORMAT_VERSION,
        "gallery": gallery.key,
        "gallery_alias": gallery.manifest.alias,
        "gallery_fingerprint": fp,
        "index_sha256": sha,
        "rows": "l2-normalised",
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
        "params": asdict(p),
        "build": build,
        "faiss": faiss.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(d / META_FILE, meta)


def stale_indexes(store: CacheStore) -> list[tuple[Path, str]]:
    """Cached indexes that can no longer be used, with why: incomplete, gallery removed, gallery changed."""
    root = store.root / "indexes"
    out: list[tuple[Path, str]] = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = _read_meta(d)
        if not meta:
            out.append((d, "incomplete or unreadable"))
            continue
        gkey = meta.get("gallery", "")
        try:
            manifest = read_manifest(store.entry_dir(gkey)) if gkey else None
        except (ValueError, KeyError, TypeError):
            manifest = None
        if manifest is None:
            out.append((d, f"gallery entry {gkey[:12]} was removed"))
            continue
        if gallery_fingerprint(manifest) != meta.get("gallery_fingerprint"):
            out.append((d, f"gallery entry {gkey[:12]} changed since the index was built"))
    return out


def gc_indexes(store: CacheStore) -> list[str]:
    """Remove the indexes :func:`stale_indexes` lists; returns one line per removed index."""
    from cvgl.cache.store import safe_rmtree

    removed = []
    for d, why in stale_indexes(store):
        if store.is_locked(f"index-{d.name}"):
            continue  # being built right now: "incomplete" only until its writer finishes
        safe_rmtree(store.root, d)
        removed.append(f"index {d.name[:12]} ({why})")
    return removed
