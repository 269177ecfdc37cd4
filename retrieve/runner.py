"""The retrieval stage: cached query and gallery entries → exact metrics and a per-query report."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from cache.store import CacheStore, Entry
from configs.errors import UserError
from configs.naming import default_retrieval_pair
from configs.run import RunFolder, write_json_atomic
from configs.schema import Config


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _view(entry: Entry) -> str:
    return str(entry.manifest.extra.get("view") or entry.label)


def run_retrieval(
    cfg: Config,
    store: CacheStore,
    run: RunFolder,
    *,
    query: str | None = None,
    gallery: str | None = None,
    out_dir: Path | None = None,
) -> dict:
    """Evaluate ``query`` against ``gallery`` (aliases or keys) under ``cfg.retrieve.protocol``.

    Writes ``metrics.json`` and ``per_query.csv`` into ``out_dir`` (default: the run folder) and
    returns the metrics.
    """
    out_dir = out_dir or run.path
    out_dir.mkdir(parents=True, exist_ok=True)
    from retrieve.metrics import evaluate_streaming

    if query is None or gallery is None:
        dq, dg = (cfg.retrieve.query, cfg.retrieve.gallery)
        if dq is None or dg is None:
            fq, fg = default_retrieval_pair(cfg)
            dq, dg = dq or fq, dg or fg
        query, gallery = query or dq, gallery or dg
    qe, ge = store.open(query), store.open(gallery)
    run.record_keys({f"query:{query}": qe.key, f"gallery:{gallery}": ge.key})
    if ge.count == 0:
        raise UserError(f"gallery {gallery} is empty; extract a gallery with images first")
    if qe.shape != ge.shape:
        raise UserError(
            f"query {query} has descriptors of shape {list(qe.shape)} but gallery {gallery} has {list(ge.shape)}; "
            "compare entries from the same backbone, layer and alignment"
        )
    q_desc, q_labels, q_names = qe.read()
    q_desc = q_desc.reshape(q_desc.shape[0], -1)

    def chunks():
        for d, lab, _ in ge.iter_chunks():
            yield d.reshape(d.shape[0], -1), lab

    protocol = cfg.retrieve.protocol
    ks = tuple(cfg.retrieve.ks)
    g_labels = ge.labels()
    n_rankable = ge.count if protocol == "cvft" else int((g_labels != -1).sum())
    if n_rankable == 0:
        raise UserError(f"gallery {gallery} has only junk items (label -1); nothing can be retrieved")
    topk = min(cfg.retrieve.topk, n_rankable)
    summary, results = evaluate_streaming(
        q_desc, q_labels, chunks, protocol, ks=ks, topk=topk, device=_device(cfg.retrieve.device)
    )
    metrics = {
        "protocol": protocol,
        "direction": f"{_view(qe)}->{_view(ge)}",
        "query": query,
        "gallery": gallery,
        **summary,
    }
    g_names = ge.names()
    _write_per_query(out_dir / "per_query.csv", q_names, q_labels, results, g_names)
    write_json_atomic(out_dir / "metrics.json", metrics)
    if out_dir == run.path:
        run.record(metrics=metrics)
    return metrics


def _write_per_query(
    path: Path, q_names: list[str], q_labels: np.ndarray, results, g_names: list[str]
) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
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
                    " ".join(g_names[j] for j in results.topk[i] if j >= 0),
                ]
            )
    os.replace(tmp, path)
