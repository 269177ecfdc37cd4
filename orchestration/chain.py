"""The chain of stages as Python calls: each stage runs in a run folder that is marked failed on error.

:func:`extract`, :func:`align`, :func:`retrieve` and :func:`run` (all three) return a
:class:`StageResult`; :func:`open_entry` opens a cache entry and :func:`evaluate` scores arrays under
a protocol. :mod:`cvgl.pipeline` re-exports them as the public API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvgl.core.console import Progress, SilentProgress
from cvgl.core.errors import UserError, one_line

if TYPE_CHECKING:
    import numpy as np
    from cvgl.cache.store import CacheStore, Entry
    from cvgl.configs.schema import Config
    from cvgl.core.run_folder import RunFolder


@dataclass
class StageResult:
    """What a stage call returns.

    ``run_dir``: the run folder (config.yaml, run.json, the stage's outputs); None on a torchrun rank
    other than 0, which keeps none. ``entries``: the extracted entries (each with ``alias``, ``key``,
    ``count``, ``view``, ``layer`` and ``reused``). ``aligned``: the aligned entries (``alias``,
    ``key``, ``count``, ``reused``). ``metrics``: the retrieval metrics as written to metrics.json
    (percent), None for extract and align.
    """

    run_dir: Path | None
    entries: list = field(default_factory=list)
    aligned: list = field(default_factory=list)
    metrics: dict[str, Any] | None = None


def in_run_folder(
    stage: str,
    cfg: Config,
    cache_dir: str | Path | None,
    work: Callable[[Config, CacheStore, RunFolder], Any],
) -> tuple[Any, Path | None]:
    """``work(cfg, store, folder)`` inside a new run folder; a failure marks the folder failed."""
    from cvgl.cache.store import CacheStore
    from cvgl.core.run_folder import RunFolder

    store = CacheStore.open_default(cache_dir)
    store.require_writable()
    folder = RunFolder(cfg, stage, cache_root=store.root)
    try:
        result = work(cfg, store, folder)
    except BaseException as e:
        folder.fail(one_line(e))
        raise
    folder.finish()
    return result, None if folder.scratch else folder.path


def extract(
    cfg: Config, *, cache_dir: str | Path | None = None, progress: Progress | None = None
) -> StageResult:
    """Run the frozen backbone over ``cfg.dataset`` and cache one entry per (view, layer); entries the
    cache already holds are reused, not recomputed. ``cache_dir``: as ``--cache-dir``."""
    from cvgl.extract.distributed import extract as run_extraction

    report = progress or SilentProgress()

    def work(cfg: Config, store: CacheStore, folder: RunFolder) -> list:
        entries = run_extraction(cfg, store, progress=report)
        folder.record_keys({e.alias: e.key for e in entries})
        return entries

    entries, run_dir = in_run_folder("extract", cfg, cache_dir, work)
    return StageResult(run_dir, entries=entries)


def align(
    cfg: Config, *, cache_dir: str | Path | None = None, progress: Progress | None = None
) -> StageResult:
    """Train ``cfg.align.method`` on cached entries and cache the aligned entries (reused when cached)."""
    from cvgl.align.stage import run_alignment

    report = progress or SilentProgress()
    aligned, run_dir = in_run_folder(
        "align", cfg, cache_dir, lambda cfg, store, folder: run_alignment(cfg, store, folder, log=report.log)
    )
    return StageResult(run_dir, aligned=aligned)


def _retrieval(
    cfg: Config,
    store: CacheStore,
    folder: RunFolder,
    progress: Progress,
    query: str | None = None,
    gallery: str | None = None,
) -> dict[str, Any]:
    from cvgl.retrieve.runner import run_retrieval

    if cfg.dataset.layout == "geoalign_release":
        from cvgl.align.release import run_release

        q, g = run_release(cfg, store, folder)
        query, gallery = query or cfg.retrieve.query or q, gallery or cfg.retrieve.gallery or g
    return run_retrieval(cfg, store, folder, query=query, gallery=gallery, progress=progress)


def retrieve(
    cfg: Config,
    *,
    query: str | None = None,
    gallery: str | None = None,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> StageResult:
    """Exact retrieval metrics of ``query`` against ``gallery`` (aliases or keys; default
    ``cfg.retrieve.query`` / ``gallery``, else the extraction's entries) under ``cfg.retrieve``."""
    report = progress or SilentProgress()
    metrics, run_dir = in_run_folder(
        "retrieve",
        cfg,
        cache_dir,
        lambda cfg, store, folder: _retrieval(cfg, store, folder, report, query, gallery),
    )
    return StageResult(run_dir, metrics=metrics)


def run(cfg: Config, *, cache_dir: str | Path | None = None, progress: Progress | None = None) -> StageResult:
    """extract → align → retrieve in one run folder; each stage reuses what the cache holds. Named
    alignment inputs skip extraction; named retrieval inputs skip alignment too (``stages_needed``)."""
    from cvgl.align.stage import run_alignment
    from cvgl.cache.naming import stages_needed
    from cvgl.extract.distributed import extract as run_extraction

    report = progress or SilentProgress()

    def work(cfg: Config, store: CacheStore, folder: RunFolder) -> StageResult:
        # Named inputs (imported entries) skip the stages that would produce them.
        extract_needed, align_needed = stages_needed(cfg)
        entries = run_extraction(cfg, store, progress=report) if extract_needed else []
        folder.record_keys({e.alias: e.key for e in entries})
        aligned = run_alignment(cfg, store, folder, log=report.log) if align_needed else []
        metrics = _retrieval(cfg, store, folder, report)
        return StageResult(None, entries=entries, aligned=aligned, metrics=metrics)

    result, run_dir = in_run_folder("run", cfg, cache_dir, work)
    result.run_dir = run_dir
    return result


def open_entry(ref: str, *, cache_dir: str | Path | None = None) -> Entry:
    """A complete cache entry by alias, key or unambiguous key prefix (8+ hex digits).

    ``entry.read()`` gives ``(descriptors [n, d] float32, labels [n] int64, names)``;
    ``entry.iter_chunks(with_names=True)`` yields the same shard by shard (one shard in memory);
    ``entry.labels()`` / ``entry.names()`` read no descriptors. ``key``, ``count``, ``shape``,
    ``manifest`` describe it.
    """
    from cvgl.cache.store import CacheStore

    return CacheStore.open_default(cache_dir).open(ref)


def evaluate(
    query: np.ndarray | Entry,
    query_labels: np.ndarray | None,
    gallery: np.ndarray | Entry,
    gallery_labels: np.ndarray | None,
    protocol: str = "u1652",
    *,
    ks: Sequence[int] = (1, 5, 10),
    topk: int = 10,
    device: str = "cpu",
    semi_positives: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics (percent) of ``query`` rows against ``gallery`` rows under ``protocol``
    (u1652 | geoalign | cvft | vigor), scored by cosine as ``retrieve`` scores them.

    Arrays are ``[n, d]`` descriptors with ``[n]`` integer labels (-1 junk, -2 distractor; labels may
    be None under cvft, where row i of each side is a pair). An :class:`Entry` (:func:`open_entry`) may
    stand for either side, with its labels passed as None: a gallery entry is streamed shard by shard.
    ``topk`` is capped at the gallery size; ``semi_positives`` is vigor's ``[n_q, m]`` labels.
    """
    from cvgl.cache.store import Entry
    from cvgl.retrieve.indexes import l2_normalize_rows
    from cvgl.retrieve.metrics import evaluate_streaming

    if isinstance(query, Entry):
        q, own_labels, _ = query.read()
        query_labels = own_labels if query_labels is None else query_labels
        query = q
    q = l2_normalize_rows(query, "query")
    if isinstance(gallery, Entry):
        entry = gallery
        if gallery_labels is not None:
            raise UserError(
                "a gallery given as a cache entry brings its own labels; pass gallery_labels=None"
            )
        n_gallery = entry.count

        def chunks():
            offset = 0
            for d, lab, _ in entry.iter_chunks():
                yield l2_normalize_rows(d, f"gallery {entry.label}", offset), lab
                offset += d.shape[0]

    else:
        g = l2_normalize_rows(gallery, "gallery")
        n_gallery = g.shape[0]

        def chunks():
            return iter([(g, gallery_labels)])

    topk = min(topk, n_gallery) if isinstance(topk, int) and n_gallery > 0 else topk
    summary, _ = evaluate_streaming(
        q, query_labels, chunks, protocol, ks=ks, topk=topk, device=device, semi_positives=semi_positives
    )
    return summary
