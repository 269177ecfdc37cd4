"""The retrieval stage: cached query and gallery entries → exact metrics, top-K lists and reports.

Metrics (R@K, R@1%, AP) always come from ``retrieve.metrics``: exact ranks of every positive over the
whole gallery, streamed shard by shard. ``retrieve.index`` only chooses what serves each query's top-K
list: ``flat`` takes it from that exact pass; ``ivf_flat`` / ``ivf_pq`` / ``hnsw`` search a cached FAISS
index, and metrics.json then states the index's recall@K against the exact lists. ``retrieve.rerank=
k_reciprocal`` re-ranks query + gallery (small galleries) and reports metrics with and without it.

Writes into the output folder: ``metrics.json``, ``per_query.csv``, and with ``retrieve.report``
``recall_curve.png``, ``report.html`` and ``thumbs/``.

``retrieve.metric``: ``cosine`` scores L2-normalized rows (rows whose stored norm is off 1 give one
warning); ``l2`` ranks the rows as stored by Euclidean distance (VPR-methods-evaluation's IndexFlatL2).
``protocol=vpr`` takes each query's positives within ``retrieve.positive_radius_m`` of its position
(``retrieve.geo.entry_positions_of``). Exact duplicate gallery rows are counted as they stream and
reported in one warning (they tie in every ranking).
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.cache.naming import default_retrieval_pair
from cvgl.cache.store import CacheStore, Entry
from cvgl.configs.schema import Config
from cvgl.core.atomic import atomic_path, write_json_atomic
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from cvgl.retrieve.baseline import Baseline
from cvgl.retrieve.image_roots import image_root
from cvgl.retrieve.indexes import l2_normalize_rows
from cvgl.retrieve.metrics import QueryResults
from cvgl.retrieve.row_checks import NORM_TOLERANCE, RowHashes, RowNorms

DEFAULT_TOPK = 10
METRICS_SOURCE = "exact: retrieve.metrics, ranks of every positive over the whole gallery"


def _view(entry: Entry) -> str:
    return str(entry.manifest.extra.get("view") or entry.label)


def resolve_topk(topk: int | None, n_rankable: int, gallery: str) -> int:
    """``retrieve.topk``: None = 10 (or the gallery size if smaller); more than the gallery holds = error."""
    if topk is None:
        return min(DEFAULT_TOPK, n_rankable)
    if topk > n_rankable:
        raise UserError(
            f"retrieve.topk={topk} exceeds the {n_rankable} rankable items of gallery {gallery}; "
            f"lower retrieve.topk to at most {n_rankable}"
        )
    return int(topk)


def run_retrieval(
    cfg: Config,
    store: CacheStore,
    run: RunFolder,
    *,
    query: str | None = None,
    gallery: str | None = None,
    out_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Evaluate ``query`` against ``gallery`` (aliases or keys) under ``cfg.retrieve``.

    Writes metrics.json, per_query.csv and the reports into ``out_dir`` (default: the run folder) and
    returns the metrics.
    """
    out_dir = out_dir or run.path
    out_dir.mkdir(parents=True, exist_ok=True)
    from cvgl.retrieve.metrics import evaluate_streaming

    rc = cfg.retrieve
    if query is None or gallery is None:
        dq, dg = (rc.query, rc.gallery)
        if dq is None or dg is None:
            fq, fg = default_retrieval_pair(cfg)
            dq, dg = dq or fq, dg or fg
        query, gallery = query or dq, gallery or dg
    qe, ge = store.open(query), store.open(gallery)
    run.record_keys({f"query:{query}": qe.key, f"gallery:{gallery}": ge.key})
    if ge.count == 0:
        raise UserError(f"gallery {gallery} is empty (0 descriptors); extract a gallery with images first")
    if qe.count == 0:
        raise UserError(f"query set {query} is empty (0 descriptors); extract queries with images first")
    if qe.shape != ge.shape:
        raise UserError(
            f"query {query} has descriptors of shape {list(qe.shape)} (dimension {qe.dim}) but gallery "
            f"{gallery} has {list(ge.shape)} (dimension {ge.dim}); compare entries from the same backbone, "
            "layer and alignment"
        )
    protocol = rc.protocol
    if protocol == "map":
        return _run_map(cfg, store, run, qe, ge, query, gallery, out_dir)
    ks = tuple(rc.ks)
    g_labels = ge.labels()
    label_free = protocol in ("cvft", "vpr")
    n_rankable = ge.count if label_free else int((g_labels != -1).sum())
    metric = rc.metric
    if metric == "l2" and (rc.index != "flat" or rc.rerank != "none" or rc.multi_query):
        raise UserError(
            "retrieve.metric=l2 ranks by the exact pass only; set retrieve.index=flat, retrieve.rerank=none "
            "and retrieve.multi_query=false, or use retrieve.metric=cosine"
        )
    if protocol == "vpr" and (rc.rerank != "none" or rc.multi_query):
        raise UserError(
            "protocol=vpr ranks each query image on its own; set retrieve.rerank=none and retrieve.multi_query=false"
        )
    if n_rankable == 0:
        raise UserError(f"gallery {gallery} has only junk items (label -1); nothing can be retrieved")
    topk = resolve_topk(rc.topk, n_rankable, gallery)
    if rc.geo:
        from cvgl.retrieve.geo import geo_topk

        topk = geo_topk(rc.topk, topk, ks, n_rankable)
    if rc.rerank == "k_reciprocal":
        from cvgl.retrieve.rerank import check_rerank_size

        check_rerank_size(qe.count, ge.count, rc.rerank_max_items)  # before the expensive pass
    # Retrieval computes the same numbers on the CPU: CUDA asked for but missing warns, then falls back.
    device = str(resolve_device(rc.device, "retrieve.device", cuda_fallback=True))

    q_desc, q_labels, q_names = qe.read()
    q_norms, g_norms, g_hashes = RowNorms(), RowNorms(), RowHashes()
    q_norms.add(q_desc)
    if metric == "cosine":
        # Cosine, whatever produced the entries: rows are L2-normalised here, at scoring time (the exact
        # pass, the ANN index and re-ranking alike), not trusted to be unit vectors already.
        q_desc = l2_normalize_rows(q_desc, f"query set {query}")
    n_views = q_desc.shape[0]
    if rc.multi_query:  # University-1652's multi-query: one query per location (retrieve/submission.py)
        from cvgl.retrieve.submission import multi_query

        if protocol == "cvft":
            raise UserError("retrieve.multi_query needs labelled locations; it does not apply to protocol=cvft")
        q_desc, q_labels, q_names = multi_query(q_desc, q_labels, q_names)
    answer_order = None
    answer_file: Path | None = None
    if rc.answer:  # checked before the expensive pass: a wrong order file fails fast
        from cvgl.retrieve.submission import ANSWER_TOPK, answer_path, answer_rows

        if topk < min(ANSWER_TOPK, n_rankable):
            raise UserError(
                f"retrieve.answer writes the top {ANSWER_TOPK} per query but retrieve.topk={topk}; "
                f"leave retrieve.topk unset or set it to {ANSWER_TOPK} or more"
            )
        answer_order = answer_rows(rc.answer_order, q_names)
        answer_file = answer_path(rc.answer, out_dir, overwrite=rc.answer_overwrite)

    folder_base = None
    if rc.baseline not in ("raw", "none"):  # read before the expensive pass: a wrong folder fails fast
        from cvgl.retrieve.baseline import folder_baseline

        folder_base = folder_baseline(rc.baseline, q_names)
    semi, positions, row_positives = None, None, None
    if protocol in ("vigor", "vpr") or rc.geo:  # read before the expensive pass: a missing one fails fast
        from cvgl.retrieve import geo

        if protocol == "vigor":
            semi = geo.semi_positives_for(cfg, store, qe, query)
        if protocol == "vpr":
            from cvgl.datasets.vpr_positions import radius_positives

            row_positives = radius_positives(
                geo.entry_positions_of(cfg, store, qe, q_names, "query", image_root(store, qe.manifest)),
                geo.entry_positions_of(cfg, store, ge, ge.names(), "gallery", image_root(store, ge.manifest)),
                rc.positive_radius_m,
            )
        if rc.geo:
            q_root, g_root = image_root(store, qe.manifest), image_root(store, ge.manifest)
            positions = geo.entry_positions(cfg, q_names, ge.names(), q_root, g_root)

    passes = [0]

    def chunks():
        # The first pass also checks the stored rows: their norms and exact duplicates (junk aside).
        first = passes[0] == 0
        passes[0] += 1
        offset = 0
        for d, lab, _ in ge.iter_chunks():
            if first:
                g_norms.add(d)
                g_hashes.add(d if label_free else d[lab != -1])
            yield (l2_normalize_rows(d, f"gallery {gallery}", offset) if metric == "cosine" else d), lab
            offset += d.shape[0]

    summary, results = evaluate_streaming(
        q_desc,
        None if protocol == "vpr" else q_labels,
        chunks,
        protocol,
        ks=ks,
        topk=topk,
        device=device,
        semi_positives=semi,
        metric="ip" if metric == "cosine" else "l2",
        positives=row_positives,
    )
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "direction": f"{_view(qe)}->{_view(ge)}",
        "query": query,
        "gallery": gallery,
        "metric": metric,
        **summary,
        "metrics_source": METRICS_SOURCE,
        "topk_source": "exact (the metrics pass)",
    }
    baseline = folder_base
    if rc.baseline == "raw" and not rc.multi_query:
        from cvgl.retrieve.baseline import raw_baseline

        baseline = raw_baseline(
            store,
            qe,
            ge,
            q_names,
            lambda q, lab, ch: evaluate_streaming(
                q,
                lab,
                ch,
                protocol,
                ks=ks,
                topk=1,
                device=device,
                semi_positives=semi,
                metric="ip" if metric == "cosine" else "l2",
                positives=row_positives,
            ),
        )
    if baseline is not None:
        metrics["baseline"] = baseline.summary()
    if protocol == "vpr":
        metrics["positive_radius_m"] = rc.positive_radius_m
    _warn_rows(metrics, metric, gallery, q_norms, g_norms, g_hashes)
    lists = (results.topk, results.topk_scores)
    if rc.index != "flat":
        ann, lists = _ann_lists(cfg, store, run, ge, g_labels, q_desc, results, topk, device, progress)
        metrics["topk_source"] = f"{rc.index} index (approximate; recall against exact in 'ann')"
        metrics["ann"] = ann
    final = results
    curves = [("exact", results.first_rank)]
    if rc.rerank == "k_reciprocal":
        final, rr = _rerank(cfg, ge, q_desc, q_labels, g_labels, topk, device)
        metrics["without_rerank"] = {k: v for k, v in summary.items() if k.startswith("R@") or k == "AP"}
        metrics.update({k: v for k, v in rr.items() if k.startswith("R@") or k == "AP"})
        metrics["rerank"] = {
            "method": "k_reciprocal",
            "k1": rc.k1,
            "k2": rc.k2,
            "lambda_value": rc.lambda_value,
        }
        metrics["topk_source"] = "k-reciprocal re-ranked distances (exact)"
        lists = (final.topk, final.topk_scores)
        curves = [("re-ranked", final.first_rank), ("without re-ranking", results.first_rank)]

    g_names = ge.names()
    if rc.multi_query:
        metrics["multi_query"] = {"views": int(n_views), "queries": int(q_desc.shape[0])}
    if answer_order is not None:
        from cvgl.retrieve.submission import write_answer

        metrics["answer"] = str(
            write_answer(Path(str(answer_file)), answer_order, lists[0], g_names, overwrite=rc.answer_overwrite)
        )
    if positions is not None:  # from the exact (or re-ranked) lists, like every other metric
        from cvgl.retrieve.geo import geo_metrics

        metrics.update(
            geo_metrics(*positions, final.topk, ks, scale=rc.sdm_scale, ma_metres=rc.ma_metres)
        )
    _write_per_query(out_dir / "per_query.csv", q_names, q_labels, final, lists[0], g_names)
    if rc.report:
        metrics["report"] = _write_reports(
            cfg,
            store,
            out_dir,
            metrics,
            qe,
            ge,
            q_names,
            q_labels,
            g_labels,
            g_names,
            final,
            lists,
            curves,
            n_rankable,
            baseline,
            row_positives,
        )
    write_json_atomic(out_dir / "metrics.json", metrics)
    if out_dir == run.path:
        run.record(metrics=metrics)
    return metrics


def _run_map(
    cfg: Config, store: CacheStore, run: RunFolder, qe: Entry, ge: Entry, query: str, gallery: str, out_dir: Path
) -> dict:
    """``protocol=map`` (retrieve/map_eval.py): positions in metres instead of label matches."""
    from cvgl.retrieve.map_eval import run_map_protocol

    rc = cfg.retrieve
    for flag, on in (("rerank", rc.rerank != "none"), ("multi_query", rc.multi_query), ("answer", bool(rc.answer)),
                     ("geo", rc.geo), ("index", rc.index != "flat")):
        if on:
            raise UserError(
                f"retrieve.{flag} does not apply to protocol=map (it ranks by footprints and scores in metres "
                f"itself); leave retrieve.{flag} at its default"
            )
    device = str(resolve_device(rc.device, "retrieve.device", cuda_fallback=True))
    q_desc, _, q_names = qe.read()
    q_desc = l2_normalize_rows(q_desc, f"query set {query}")

    def chunks():
        offset = 0
        for d, lab, _ in ge.iter_chunks():
            yield l2_normalize_rows(d, f"gallery {gallery}", offset), lab
            offset += d.shape[0]

    found = run_map_protocol(cfg, store, qe, ge, q_desc, q_names, chunks, out_dir, device=device)
    metrics = {
        "protocol": "map",
        "direction": f"{_view(qe)}->{_view(ge)}",
        "query": query,
        "gallery": gallery,
        **found,
        "metrics_source": "exact top-K lists over the whole gallery; positives by footprint (retrieve/locate.py)",
    }
    write_json_atomic(out_dir / "metrics.json", metrics)
    if out_dir == run.path:
        run.record(metrics=metrics)
    return metrics


def _warn_rows(
    metrics: dict[str, Any], metric: str, gallery: str, q_norms: RowNorms, g_norms: RowNorms, g_hashes: RowHashes
) -> None:
    """Record duplicate gallery rows in ``metrics``; one warning for ties, one for cosine on raw rows."""
    dup_rows, dup_groups = g_hashes.duplicates()
    metrics["duplicate_gallery_rows"] = dup_rows
    if dup_rows:
        warnings.warn(
            f"gallery {gallery} holds {dup_rows} rows that exactly duplicate another row ({dup_groups} groups); "
            "duplicates tie in every ranking and ties go in the query's favour, so R@K can differ from a "
            "reference that breaks ties by sort order (e.g. University-1652's argsort); deduplicate the "
            "gallery to compare",
            stacklevel=2,
        )
    if metric != "cosine":
        return
    off = [d for d in (q_norms.describe("query"), g_norms.describe("gallery")) if d]
    if off:
        warnings.warn(
            f"retrieve.metric=cosine on descriptors that are not normalized: {' and '.join(off)} have an L2 "
            f"norm off 1 by more than {NORM_TOLERANCE:g}; they are normalized at scoring time, which ranks "
            "differently from L2 on the raw rows; set retrieve.metric=l2 to rank as VPR code does",
            stacklevel=2,
        )


def _ann_lists(
    cfg: Config,
    store: CacheStore,
    run: RunFolder,
    ge: Entry,
    g_labels: np.ndarray,
    q_desc: np.ndarray,
    exact: QueryResults,
    topk: int,
    device: str,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """Top-K lists from the cached ANN index, and its recall against the exact lists."""
    from cvgl.retrieve.indexes import IndexParams, open_or_build, recall_vs_exact, search, to_gpu

    rc = cfg.retrieve
    served = open_or_build(
        store, ge, IndexParams.from_config(rc, seed=cfg.seed), rebuild=rc.rebuild_index, progress=progress
    )
    info = dict(served.info or {})
    run.record_keys({f"index:{rc.index}:{ge.label}": info["index_key"]})
    if device.startswith("cuda"):
        served = to_gpu(served)
    junk = np.flatnonzero(g_labels == -1) if cfg.retrieve.protocol != "cvft" else None
    t0 = time.perf_counter()
    scores, ids = search(served, q_desc, topk, exclude=junk)
    t_search = time.perf_counter() - t0
    k_recall, nn_recall = recall_vs_exact(ids, exact.topk)
    p = served.params
    ann = {
        "index": p.kind,
        "build_params": p.build_spec(),
        "search_params": p.search_spec(),
        f"recall@{topk}_vs_exact": round(k_recall, 6),
        f"nn_recall@{topk}_vs_exact": round(nn_recall, 6),
        "sample": int(ids.shape[0]),
        "recall_note": (
            f"recall@{topk}: share of the exact top-{topk} found by the index; nn_recall: share of queries "
            "whose exact nearest neighbour is in the index's list; over every query (the exact lists come "
            "free with the exact metrics)"
        ),
        "on_gpu": served.on_gpu,
        "index_cache": info.get("index_cache"),
        "index_key": info.get("index_key"),
        "build_s": info.get("build_s"),
        "search_s": round(t_search, 4),
        "queries_per_s": round(ids.shape[0] / max(t_search, 1e-9), 1),
    }
    if "gpu_fallback" in info:
        ann["gpu_fallback"] = info["gpu_fallback"]
    return ann, (ids, scores)


def _rerank(
    cfg: Config,
    ge: Entry,
    q_desc: np.ndarray,
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    topk: int,
    device: str,
) -> tuple[QueryResults, dict[str, Any]]:
    """k-reciprocal re-ranking; exact ranks from the re-ranked distance matrix."""
    from cvgl.retrieve.metrics import evaluate_scores
    from cvgl.retrieve.rerank import k_reciprocal_distance

    rc = cfg.retrieve
    g_desc = l2_normalize_rows(ge.read()[0], f"gallery {ge.label}")
    dist = k_reciprocal_distance(
        q_desc,
        g_desc,
        k1=rc.k1,
        k2=rc.k2,
        lambda_value=rc.lambda_value,
        max_items=rc.rerank_max_items,
    )
    summary, results = evaluate_scores(
        np.negative(dist, out=dist),
        q_labels,
        g_labels,
        rc.protocol,
        ks=tuple(rc.ks),
        topk=topk,
        device=device,
    )
    return results, summary


def _write_reports(
    cfg: Config,
    store: CacheStore,
    out_dir: Path,
    metrics: dict,
    qe: Entry,
    ge: Entry,
    q_names: list[str],
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    g_names: list[str],
    final: QueryResults,
    lists: tuple[np.ndarray, np.ndarray],
    curves: list[tuple[str, np.ndarray]],
    n_rankable: int,
    baseline: Baseline | None,
    row_positives: list[np.ndarray] | None = None,
) -> dict[str, str]:
    from cvgl.retrieve.reports import (
        ReportData,
        correct_matrix,
        curves_for,
        write_html_report,
        write_recall_png,
    )

    rc = cfg.retrieve
    title = report_title(qe, out_dir)
    compared = f"{metrics['query']} → {metrics['gallery']} ({metrics['protocol']})"
    png_title = title.replace("→", "->").replace("·", "-")  # Pillow's default font has neither
    if baseline is not None and baseline.source == "raw":
        # The recall curve of the raw descriptors beside this run's (same gallery, same protocol).
        curves = [("this run" if c[0] == "exact" else c[0], c[1]) for c in curves]
        curves.append((baseline.label, baseline.first_rank))
    write_recall_png(out_dir / "recall_curve.png", curves_for(curves, n_rankable), png_title)
    reranked = "rerank" in metrics
    data = ReportData(
        title=title,
        metrics=metrics,
        q_names=q_names,
        q_labels=q_labels,
        g_names=g_names,
        first_rank=final.first_rank,
        ap=final.ap,
        topk=lists[0],
        topk_scores=-lists[1] if reranked else lists[1],
        correct=(
            correct_matrix(lists[0], q_labels, g_labels, rc.protocol)
            if row_positives is None
            else np.array([np.isin(row, pos) for row, pos in zip(lists[0], row_positives)], dtype=bool)
        ),
        q_root=image_root(store, qe.manifest),
        g_root=image_root(store, ge.manifest),
        topk_source=metrics["topk_source"],
        score_name="re-ranked distance" if reranked else ("-(L2 distance)^2" if rc.metric == "l2" else "score"),
        subtitle=compared,
        g_labels=None if rc.protocol == "cvft" else g_labels,
        baseline_first=None if baseline is None else baseline.first_rank,
        baseline_label="" if baseline is None else baseline.label,
        baseline_metrics=None if baseline is None else baseline.metrics,
    )
    write_html_report(out_dir, data, n_queries=rc.report_queries, thumb_size=rc.thumb_size, seed=cfg.seed)
    return {"html": "report.html", "recall_curve": "recall_curve.png"}


def report_title(qe: Entry, out_dir: Path) -> str:
    """The report's title: the method that made the query descriptors, and the run folder.

    The method is the aligned entry's ``align.method`` (``raw descriptors`` for extracted or imported
    entries, with the layer when the view names one); the run is the folder's name, with the sweep
    folder in front for a sweep point (``points/<n>``)."""
    method = qe.manifest.extra.get("method")
    if not method:
        layer = qe.label.rpartition("@")[2] if "@" in qe.label else ""
        method = f"raw descriptors (layer {layer})" if layer else "raw descriptors"
    folder = Path(out_dir).absolute()
    run = folder.name
    if folder.parent.name == "points":
        run = f"{folder.parent.parent.name}/points/{folder.name}"
    return f"{method} · run {run}"


def _write_per_query(
    path: Path,
    q_names: list[str],
    q_labels: np.ndarray,
    results: QueryResults,
    topk: np.ndarray,
    g_names: list[str],
) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "label", "first_match_rank", "ap", "n_positives", "topk"])
        for i, name in enumerate(q_names):
            ap = float(results.ap[i])
            w.writerow(
                [
                    name,
                    int(q_labels[i]),
                    int(results.first_rank[i]),
                    "" if math.isnan(ap) else f"{100 * ap:.4f}",
                    int(results.n_positives[i]),
                    " ".join(g_names[j] for j in topk[i] if j >= 0),
                ]
            )
